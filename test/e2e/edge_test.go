package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/ccmesh/ccmesh/internal/sdp"
)

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ccmesh test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// registerOver registers user's phone through the node's listener at addr with
// transport (tls or ws), answering the digest challenge.
func registerOver(t *testing.T, pool *x509.CertPool, transport, addr, user, pass string) {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent(transport+"-phone"), sipgo.WithUserAgentHostname("127.0.0.1"),
		sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	client, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	var uri sip.Uri
	if err := sip.ParseUri("sip:"+addr+";transport="+transport, &uri); err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.REGISTER, uri)
	req.AppendHeader(sip.NewHeader("From", "<sip:"+user+"@127.0.0.1>;tag=r"+transport))
	req.AppendHeader(sip.NewHeader("To", "<sip:"+user+"@127.0.0.1>"))
	req.AppendHeader(sip.NewHeader("Contact", "<sip:"+user+"@127.0.0.1:5999;transport="+transport+">"))
	req.AppendHeader(sip.NewHeader("Expires", "300"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := client.Do(ctx, req)
	if err == nil && res.StatusCode == 401 {
		res, err = client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: user, Password: pass})
	}
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER over %s: %v %v", transport, res, err)
	}
}

// SIP over TLS (RFC 3261 §26) and WebSocket (RFC 7118): phones register through
// both listeners and the registrar records the transport each one used.
func TestTLSAndWebSocketListeners(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(),
		sipExtra: "\n  listen_tls: 127.0.0.1:0\n  tls_cert: " + jsonString(cert) + "\n  tls_key: " + jsonString(key) + "\n  listen_ws: 127.0.0.1:0"}))
	if p.sipTLS == "" || p.sipWS == "" {
		t.Fatalf("ready line without TLS/WS addresses:\n%s", p.log())
	}
	c := newClient(t, p.base)
	registerOver(t, pool, "tls", p.sipTLS, "ann", "ann-pass")
	registerOver(t, pool, "ws", p.sipWS, "bob", "bob-pass")
	regs := decode[registrationsBody](t, c.call("GET", "/api/v1/registrations", supervisor(), "", 200))
	if r := regs.Registrations["ann"]; len(r) != 1 || r[0].Transport != "TLS" {
		t.Fatalf("ann over TLS: %+v", r)
	}
	if r := regs.Registrations["bob"]; len(r) != 1 || r[0].Transport != "WS" {
		t.Fatalf("bob over WS: %+v", r)
	}
	// A plain TCP client cannot talk SIP to the TLS port.
	conn, err := net.DialTimeout("tcp", p.sipTLS, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	if n, _ := conn.Read(buf); strings.HasPrefix(string(buf[:n]), "SIP/2.0") {
		t.Fatalf("the TLS listener answered plain text: %q", buf[:n])
	}
}

// Queue options for calls: answer_mode "answer" answers at once and plays the
// music after the 200; a closed queue with a closed_target sends its calls
// there; max_calls turns the call past the limit away with 503 + Retry-After.
func TestQueueAnswerModeClosedTargetAndCallLimit(t *testing.T) {
	t.Run("answer first", func(t *testing.T) {
		t.Parallel()
		p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), queueExtra: "    answer_mode: answer\n"}))
		c := newClient(t, p.base)
		phone := startGoPhone(t, p.sipUDP, "ann", "ann-pass")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		call := waitAnswered(ctx, t, p.sipUDP, "2001") // answered with nobody ready
		readRTP(t, call.callerMedia, 3*time.Second, isMusic)
		if got := c.voice(); len(got) != 1 || got[0].State != "queued" {
			t.Fatalf("answered call should still be queued: %+v", got)
		}
		c.loginReady("sales", 1, "ann")
		toAgent, _ := answeredBy(t, phone)
		speak(t, phone, toAgent, call, 0x42)
		hangUp(ctx, t, call.caller, phone)
	})
	t.Run("closed target", func(t *testing.T) {
		t.Parallel()
		today := time.Now().UTC().Format("2006-01-02")
		p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), queueExtra: "    closed_target: support\n" +
			"    business_hours: {timezone: UTC, open: [{days: [mon, tue, wed, thu, fri, sat, sun], from: \"00:00\", to: \"23:59\"}], closed_dates: [\"" + today + "\"]}\n"}))
		c := newClient(t, p.base)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, dlg := goCall(ctx, t, p.sipUDP, "2001", sdp.PCMU, 0)
		defer func() { _ = dlg.Close() }()
		eventually(t, 5*time.Second, "the call waiting in support", func() bool {
			got := c.voice()
			return len(got) == 1 && got[0].Queue == "support" && got[0].State == "queued"
		})
	})
	t.Run("call limit", func(t *testing.T) {
		t.Parallel()
		p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), sipExtra: "\n  max_calls: 1"}))
		raw := listenUDP(t)
		local := raw.LocalAddr().String()
		if got := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "2001", "z9hG4bK-l1", "limit-1@test"), 500*time.Millisecond); !contains(got, "SIP/2.0 183") {
			t.Fatalf("first call: %v, want 183", got)
		}
		if got := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "2001", "z9hG4bK-l2", "limit-2@test"), time.Second); !contains(got, "SIP/2.0 503") {
			t.Fatalf("call over the limit: %v, want 503", got)
		}
	})
}

// media: direct is signalling only: the caller waits with 180 (no SDP, no node
// media), the agent's phone receives the caller's own offer and the caller the
// agent's answer, so RTP flows between them; hold is refused (488).
func TestDirectMediaPassesSDPThrough(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), queueExtra: "    media: direct\n"}))
	c := newClient(t, p.base)
	phone := startGoPhone(t, p.sipUDP, "ann", "ann-pass")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	callerMedia, dlg := goCall(ctx, t, p.sipUDP, "2001", sdp.PCMU, 101)
	ringing := make(chan int, 4)
	answered := make(chan error, 1)
	go func() {
		answered <- dlg.WaitAnswer(ctx, sipgo.AnswerOptions{OnResponse: func(r *sip.Response) error {
			if r.IsProvisional() && r.StatusCode > 100 {
				ringing <- r.StatusCode
				if len(r.Body()) != 0 {
					ringing <- -1
				}
			}
			return nil
		}})
	}()
	select {
	case code := <-ringing:
		if code != 180 {
			t.Fatalf("waiting caller got %d, want 180", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no 180")
	}
	if got := tryRTP(callerMedia, 300*time.Millisecond, func(*rtp.Packet) bool { return true }); got != nil {
		t.Fatal("the node sent media on a direct-media queue")
	}
	c.loginReady("sales", 1, "ann")
	var offered sdp.Media
	select {
	case offered = <-phone.offered:
	case <-time.After(5 * time.Second):
		t.Fatal("the phone was not rung")
	}
	if offered.Addr != callerMedia.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("the agent was offered %v, want the caller's own address %v", offered.Addr, callerMedia.LocalAddr())
	}
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	_ = dlg.Ack(ctx)
	ans, err := sdp.Parse(dlg.InviteResponse.Body())
	if err != nil || ans.Addr != phone.media.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("the caller got %v (%v), want the phone's address %v", ans.Addr, err, phone.media.LocalAddr())
	}
	if len(ringing) != 0 {
		t.Fatal("a provisional response carried SDP")
	}
	agentDlg := <-phone.dialogs
	req := sip.NewRequest(sip.INVITE, agentDlg.InviteRequest.Contact().Address)
	req.SetBody(sdp.Description{Addr: phone.media.LocalAddr().(*net.UDPAddr).AddrPort(), SessionID: 9, Version: 2,
		Codecs: []sdp.Codec{sdp.PCMU}, Direction: sdp.SendOnly}.Marshal())
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	if res, err := agentDlg.Do(ctx, req); err != nil || res.StatusCode != 488 {
		t.Fatalf("hold with direct media: %v %v, want 488", res, err)
	}
	hangUp(ctx, t, dlg, phone)
}
