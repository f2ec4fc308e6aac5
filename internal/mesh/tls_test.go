package mesh

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// testPKI writes a CA and a certificate for 127.0.0.1 signed by it (server and
// client use), and returns the cluster's TLS settings.
func testPKI(t *testing.T) config.ClusterTLS {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "member"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return config.ClusterTLS{CA: write("ca.pem", "CERTIFICATE", caDER), Cert: write("cert.pem", "CERTIFICATE", der), Key: write("key.pem", "EC PRIVATE KEY", kder)}
}

// Routes between members can require mutual TLS and a password: with both
// right the cluster forms and reserves across members.
func TestRoutesWithTLSAndCredentials(t *testing.T) {
	pki := testPKI(t)
	agents := []config.Agent{taskAgent("gus", "n3", 1)}
	nodes := startClusterWith(t, agents, []config.Queue{taskQueue("q")}, nil, func(c *config.ClusterConfig) {
		c.TLS, c.RouteUser, c.RoutePassword = pki, "ccmesh", "route-secret-0123456789"
	})
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	ready(t, n3, "gus")
	g, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "gus", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	must(t, err)
	must(t, n1.mesh.Release(g.Token))
}

// A member with the wrong route password is not let in.
func TestRouteWithWrongPasswordIsRefused(t *testing.T) {
	pki := testPKI(t)
	start := func(id core.NodeID, password string, peers []string) *Mesh {
		cfg := config.ClusterConfig{Name: "test", Members: members, Listen: "127.0.0.1:0", RoutesListen: "127.0.0.1:0",
			RequestTimeout: config.Duration(time.Second), Peers: peers, TLS: pki, RouteUser: "ccmesh", RoutePassword: password}
		log := events.NewLog(0, 1024, false)
		t.Cleanup(log.Close)
		m, err := New(Params{Config: cfg, Node: id, Local: agent.NewManager(agent.Params{Node: id, Log: log, Epoch: 1, Clock: clock.Real{}}), Log: log,
			Logger: slog.New(slog.DiscardHandler), DataDir: t.TempDir()})
		must(t, err)
		t.Cleanup(m.Close)
		return m
	}
	a := start("n1", "route-secret-0123456789", nil)
	b := start("n2", "wrong-secret-0123456789", []string{"nats-route://" + a.RoutesAddr()})
	time.Sleep(1500 * time.Millisecond)
	if a.srv.NumRoutes() != 0 || b.srv.NumRoutes() != 0 {
		t.Fatalf("routes formed with a wrong password: %d, %d", a.srv.NumRoutes(), b.srv.NumRoutes())
	}
}
