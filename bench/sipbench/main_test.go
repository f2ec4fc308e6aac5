package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

func TestSippCounts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stats.csv")
	csv := "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n" +
		"x;1;10;0;0;\nx;5;990;1;3;\n"
	if err := os.WriteFile(path, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	ok, failed, err := sippCounts(path)
	if err != nil || ok != 990 || failed != 3 {
		t.Fatalf("sippCounts = %d, %d, %v; want 990, 3", ok, failed, err)
	}
	if err := os.WriteFile(path, []byte("StartTime;Other;\nx;1;\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := sippCounts(path); err == nil {
		t.Fatal("a statistics file without call counts was accepted")
	}
}

func TestPercentiles(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[float64]float64{50: 5, 90: 9, 99: 10, 100: 10, 1: 1} {
		if got := pct(v, p); got != want {
			t.Errorf("pct(%v) = %v, want %v", p, got, want)
		}
	}
}

func TestParseBgPID(t *testing.T) {
	if got := parseBgPID("Background mode - PID=[17014]\n"); got != 17014 {
		t.Fatalf("parseBgPID = %d", got)
	}
	if got := parseBgPID("nothing"); got != 0 {
		t.Fatalf("parseBgPID(nothing) = %d", got)
	}
}

// The reference configuration renders with every agent's password and the
// queue number routed to a random agent.
func TestKamailioTemplate(t *testing.T) {
	tmpl, err := template.New("cfg").Parse(kamailioTemplate)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, map[string]any{"Port": 5070, "Children": 4, "ModPath": "/m/", "Users": []string{"a0001", "a0002"}, "Queue": "20001"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"listen=udp:127.0.0.1:5070", `$sht(users=>a0002) = "a0002-pass";`, `$sht(agents=>1) = "a0002";`, `$rU == "20001"`, "$RANDOM mod 2"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("rendered config lacks %q", want)
		}
	}
}
