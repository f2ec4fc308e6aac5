package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sipp runs a sipp scenario against target and returns its exit code and output.
// sipp exits 0 when every call of the scenario succeeded. Every run is bounded by
// -timeout and by a context deadline.
func sipp(t *testing.T, scenario, target string, transport string, users []string, calls int) (int, string) {
	t.Helper()
	path, err := exec.LookPath("sipp")
	if err != nil {
		t.Fatalf("sipp is required (Debian package sip-tester; `make test` installs it): %v", err)
	}
	dir := t.TempDir()
	inf := filepath.Join(dir, "users.csv")
	if err := os.WriteFile(inf, []byte("SEQUENTIAL\n"+strings.Join(users, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sf, err := filepath.Abs(filepath.Join("sipp", scenario))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{target, "-sf", sf, "-inf", inf, "-m", fmt.Sprint(calls), "-i", "127.0.0.1", "-p", "0",
		"-t", transport, "-nostdin", "-timeout", "20s", "-timeout_error", "-trace_err", "-error_file", filepath.Join(dir, "errors.log")}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	if code != 0 {
		errs, _ := os.ReadFile(filepath.Join(dir, "errors.log"))
		return code, string(out) + "\n" + string(errs)
	}
	return code, string(out)
}

type registrationsBody struct {
	Registrations map[string][]struct {
		Contact   string `json:"contact"`
		Transport string `json:"transport"`
		UserAgent string `json:"user_agent"`
	} `json:"registrations"`
}

func TestSippRegistersAgentsThroughTheBinary(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]"}))
	if p.sipUDP == "" || p.sipTCP == "" {
		t.Fatalf("no SIP listeners in the ready line")
	}
	c := newClient(t, p.base)
	// ann by her id over UDP, bob by his DN over TCP.
	if code, out := sipp(t, "register_auth.xml", p.sipUDP, "u1", []string{"ann;[authentication username=ann password=ann-pass]"}, 1); code != 0 {
		t.Fatalf("sipp UDP register: exit %d\n%s", code, out)
	}
	if code, out := sipp(t, "register_auth.xml", p.sipTCP, "t1", []string{"1002;[authentication username=1002 password=bob-pass]"}, 1); code != 0 {
		t.Fatalf("sipp TCP register: exit %d\n%s", code, out)
	}
	regs := decode[registrationsBody](t, c.call("GET", "/api/v1/registrations", supervisor(), "", 200))
	if len(regs.Registrations["ann"]) != 1 || regs.Registrations["ann"][0].Transport != "UDP" || regs.Registrations["ann"][0].UserAgent != "sipp" {
		t.Fatalf("ann's registrations: %+v", regs.Registrations["ann"])
	}
	if len(regs.Registrations["bob"]) != 1 || regs.Registrations["bob"][0].Transport != "TCP" {
		t.Fatalf("bob's registrations: %+v", regs.Registrations["bob"])
	}
	// The agent sees its own phones.
	if body := string(c.call("GET", "/api/v1/agents/ann", agent("ann"), "", 200)); !strings.Contains(body, `"registrations"`) || !strings.Contains(body, "sip:ann@127.0.0.1") {
		t.Fatalf("agent view without registrations: %s", body)
	}
	// A wrong password is refused with 403 and registers nothing.
	if code, out := sipp(t, "register_forbidden.xml", p.sipUDP, "u1", []string{"carla;[authentication username=carla password=guess]"}, 1); code != 0 {
		t.Fatalf("sipp wrong password: exit %d\n%s", code, out)
	}
	// Contact: * with Expires: 0 removes every contact of ann.
	if code, out := sipp(t, "unregister_all.xml", p.sipUDP, "u1", []string{"ann;[authentication username=ann password=ann-pass]"}, 1); code != 0 {
		t.Fatalf("sipp unregister: exit %d\n%s", code, out)
	}
	regs = decode[registrationsBody](t, c.call("GET", "/api/v1/registrations", supervisor(), "", 200))
	if len(regs.Registrations["ann"]) != 0 || len(regs.Registrations["carla"]) != 0 || len(regs.Registrations["bob"]) != 1 {
		t.Fatalf("after unregister: %+v", regs.Registrations)
	}
}

// A real softphone: baresip registers as ann, shows up in the API, and removes its
// registration when it quits.
func TestBaresipRegistersAndUnregisters(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("baresip")
	if err != nil {
		t.Fatalf("baresip is required (Debian package baresip; `make test` installs it): %v", err)
	}
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5]"}))
	c := newClient(t, p.base)
	conf := t.TempDir()
	// baresip must bind a 127.0.0.x address of its own: by interface name "lo" it fails.
	cfg := "poll_method epoll\nsip_listen 127.0.0.3:0\nnet_interface 127.0.0.3\n" +
		"audio_player aufile,/dev/null\naudio_source aufile,/dev/null\n" +
		"module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule_app account.so\n"
	if err := os.WriteFile(filepath.Join(conf, "config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	account := fmt.Sprintf("<sip:ann@%s>;auth_pass=ann-pass;regint=120\n", p.sipUDP)
	if err := os.WriteFile(filepath.Join(conf, "accounts"), []byte(account), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-4", "-f", conf, "-t", "5")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	registered := func() bool {
		regs := decode[registrationsBody](t, c.call("GET", "/api/v1/registrations", supervisor(), "", 200))
		for _, b := range regs.Registrations["ann"] {
			if strings.Contains(b.UserAgent, "baresip") {
				return true
			}
		}
		return false
	}
	eventually(t, 5*time.Second, "baresip registered as ann", registered)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("baresip: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("baresip did not quit after -t 5\n%s", out.String())
	}
	eventually(t, 5*time.Second, "baresip unregistered on exit", func() bool { return !registered() })
}
