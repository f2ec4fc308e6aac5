package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, "version")
	if code != 0 || !strings.HasPrefix(out, "ccmesh ") || len(strings.TrimSpace(out)) <= len("ccmesh") {
		t.Errorf("ccmesh version: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := run(t); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("ccmesh without arguments: exit %d, stderr %q; want 2 and usage", code, errOut)
	}
	if code, _, errOut := run(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("ccmesh frobnicate: exit %d, stderr %q", code, errOut)
	}
}

func TestCheckExample(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"../../examples/single-node.yaml", "../../examples/multichannel.yaml"} {
		code, out, errOut := run(t, "check", "--config", f)
		if code != 0 || !strings.Contains(out, "OK") {
			t.Errorf("check %s: exit %d, stdout %q, stderr %q", f, code, out, errOut)
		}
	}
	if code, _, errOut := run(t, "check"); code != 2 || !strings.Contains(errOut, "--config") {
		t.Errorf("check without --config: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := run(t, "check", "--config", filepath.Join(t.TempDir(), "missing.yaml")); code == 0 || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("check of a missing file: exit %d, stderr %q", code, errOut)
	}
}

func TestCheckBrokenConfig(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("../../examples/single-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const skills = "skills: {sales: 8, english: 9}" // ann's, agents[0]
	const bobPass = "    password: bob-pass\n"      // in agents[1]
	if !strings.Contains(string(src), skills) || !strings.Contains(string(src), bobPass) {
		t.Fatal("examples/single-node.yaml changed; update this test")
	}
	level12 := strings.Replace(string(src), skills, "skills: {sales: 12, english: 9}", 1)
	unknownKey := strings.Replace(string(src), bobPass, bobPass+"    pasword: typo\n", 1)
	both := strings.Replace(level12, bobPass, bobPass+"    pasword: typo\n", 1)

	dir := t.TempDir()
	check := func(name, content string) (int, string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := run(t, "check", "--config", p)
		if code == 0 {
			t.Errorf("check %s: exit 0 (stdout %q), want non-zero", name, out)
		}
		if strings.Contains(out, "OK") {
			t.Errorf("check %s printed OK: %q", name, out)
		}
		return code, errOut
	}

	// The validation message names the field path and the value.
	if _, errOut := check("level12.yaml", level12); !strings.Contains(errOut, "agents[0].skills.sales") || !strings.Contains(errOut, "12") {
		t.Errorf("skill level 12: stderr %q, want it to name agents[0].skills.sales and 12", errOut)
	}
	// The strict decoder names the unknown key and its line.
	if _, errOut := check("unknown.yaml", unknownKey); !strings.Contains(errOut, `unknown key "pasword"`) || !strings.Contains(errOut, "line ") {
		t.Errorf("unknown key: stderr %q, want it to name \"pasword\" and its line", errOut)
	}
	// Both problems: decoding stops at the unknown key, before validation.
	if _, errOut := check("both.yaml", both); !strings.Contains(errOut, `unknown key "pasword"`) {
		t.Errorf("unknown key and level 12: stderr %q, want the unknown key named", errOut)
	}
	// serve refuses the same file before binding anything.
	code, _, errOut := run(t, "serve", "--config", filepath.Join(dir, "level12.yaml"))
	if code == 0 || !strings.Contains(errOut, "agents[0].skills.sales") {
		t.Errorf("serve with a broken config: exit %d, stderr %q", code, errOut)
	}
}
