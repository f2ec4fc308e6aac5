package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"gopkg.in/yaml.v3"
)

// minimal is the smallest valid configuration: everything else defaults.
const minimal = `node:
  id: n1
  data_dir: /tmp/x
http:
  listen: ":0"
agents:
  - id: a1
    dn: "100"
    password: p
    skills: {sales: 1}
queues:
  - id: q1
    dn: "200"
    skills: {sales: 1}
`

func TestParseDefaultsApplied(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"node.drain_timeout", c.Node.DrainTimeout, Duration(30 * time.Second)},
		{"routing.missed_offer", c.Routing.MissedOffer, MissedOfferNotReady},
		{"routing.max_waiting", c.Routing.MaxWaiting, 100000},
		{"routing.decision_candidates", c.Routing.DecisionCandidates, 10},
		{"agents[0].name", c.Agents[0].Name, "a1"},
		{"agents[0].capacity", c.Agents[0].Capacity, map[core.Channel]int{"voice": 1, "chat": 3, "callback": 1, "task": 1}},
		{"queues[0].name", c.Queues[0].Name, "q1"},
		{"queues[0].strategy", c.Queues[0].Strategy, StrategyLongestIdle},
		{"queues[0].wrap_up", *c.Queues[0].WrapUp, Duration(10 * time.Second)},
		{"queues[0].offer_timeout", c.Queues[0].OfferTimeout, Duration(20 * time.Second)},
		{"queues[0].service_level", c.Queues[0].ServiceLevel, ServiceLevel{Threshold: Duration(20 * time.Second), TargetPercent: 80}},
		{"queues[0].max_wait", c.Queues[0].MaxWait, Duration(0)},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestApplyDefaultsKeepsSetValues(t *testing.T) {
	c := &Config{
		Node:    NodeConfig{DrainTimeout: Duration(time.Minute)},
		Routing: RoutingConfig{MissedOffer: MissedOfferReady, MaxWaiting: 5, DecisionCandidates: 3},
		Agents:  []Agent{{ID: "a", Name: "Al", Capacity: map[core.Channel]int{"chat": 0, "voice": 1}}},
		Queues: []Queue{{ID: "q", Name: "Q", Strategy: StrategyRoundRobin, WrapUp: ptr(Duration(1)), OfferTimeout: Duration(time.Second),
			ServiceLevel:  ServiceLevel{Threshold: Duration(time.Minute), TargetPercent: 50},
			BusinessHours: &BusinessHours{}}},
	}
	ApplyDefaults(c)
	if c.Node.DrainTimeout != Duration(time.Minute) || c.Routing.MissedOffer != MissedOfferReady ||
		c.Routing.MaxWaiting != 5 || c.Routing.DecisionCandidates != 3 {
		t.Errorf("node/routing overwritten: %+v %+v", c.Node, c.Routing)
	}
	a := c.Agents[0]
	if a.Name != "Al" || !reflect.DeepEqual(a.Capacity, map[core.Channel]int{"voice": 1, "chat": 0, "callback": 1, "task": 1}) {
		t.Errorf("agent = %+v", a)
	}
	q := c.Queues[0]
	if q.Name != "Q" || q.Strategy != StrategyRoundRobin || *q.WrapUp != 1 || q.OfferTimeout != Duration(time.Second) ||
		q.ServiceLevel.TargetPercent != 50 || q.ServiceLevel.Threshold != Duration(time.Minute) {
		t.Errorf("queue = %+v", q)
	}
	if q.BusinessHours.TimeZone != "UTC" {
		t.Errorf("business_hours.timezone = %q, want UTC", q.BusinessHours.TimeZone)
	}
}

func TestCapacityFor(t *testing.T) {
	tests := []struct {
		name string
		cap  map[core.Channel]int
		ch   core.Channel
		want int
	}{
		{"nil map voice", nil, core.ChannelVoice, 1},
		{"nil map chat", nil, core.ChannelChat, 3},
		{"nil map callback", nil, core.ChannelCallback, 1},
		{"nil map task", nil, core.ChannelTask, 1},
		{"explicit chat", map[core.Channel]int{"chat": 5}, core.ChannelChat, 5},
		{"zero disables", map[core.Channel]int{"chat": 0}, core.ChannelChat, 0},
		{"other key keeps default", map[core.Channel]int{"chat": 5}, core.ChannelVoice, 1},
		{"unknown channel", nil, "fax", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{Capacity: tt.cap}
			before := len(tt.cap)
			if got := a.CapacityFor(tt.ch); got != tt.want {
				t.Errorf("CapacityFor(%s) = %d, want %d", tt.ch, got, tt.want)
			}
			if len(a.Capacity) != before {
				t.Errorf("CapacityFor mutated the map: %v", a.Capacity)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"empty", "", []string{"empty configuration"}},
		{"comments only", "# nothing\n\n", []string{"empty configuration"}},
		{"null document", "~\n", []string{"empty configuration"}},
		{"two documents", minimal + "---\nnode: {id: x}\n", []string{"line 15", "only one YAML document"}},
		{"not a mapping", "- a\n- b\n", []string{"must be a mapping"}},
		{"syntax error", "node: [\n", []string{"invalid YAML"}},
		{"unknown top-level key", minimal + "nodes: {}\n", []string{`line 15: unknown key "nodes" in the top level`}},
		{"unknown agent key", strings.Replace(minimal, "    password: p\n", "    pasword: p\n", 1),
			[]string{`line 9: unknown key "pasword" in an agent`}},
		{"unknown queue key", minimal + "    stratgy: round-robin\n", []string{`line 15: unknown key "stratgy" in a queue`}},
		{"bare number duration", strings.Replace(minimal, "  data_dir: /tmp/x\n", "  data_dir: /tmp/x\n  drain_timeout: 30\n", 1),
			[]string{"line 4", `must be a duration like "30s", got "30"`}},
		{"negative duration", minimal + "    wrap_up: -5s\n", []string{"line 15", `must not be negative, got "-5s"`}},
		{"garbage duration", minimal + "    max_wait: soon\n", []string{`must be a duration like "30s", got "soon"`}},
		{"duration as a list", minimal + "    max_wait: [1s]\n", []string{`must be a duration like "30s", got a sequence`}},
		{"wrong type", minimal + "    priority: high\n", []string{"line 15", "high"}},
		{"duplicate key", minimal + "    dn: \"300\"\n", []string{`"dn" already defined`}},
		{"validation", strings.Replace(minimal, "id: q1", "id: Q1", 1), []string{`queues[0].id: invalid id "Q1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseValidationErrorType(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(minimal, "id: q1", "id: Q1", 1)))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Field != "queues[0].id" {
		t.Fatalf("Parse error = %#v, want *ValidationError at queues[0].id", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte(strings.Replace(minimal, "id: q1", "id: Q1", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(good); err != nil {
		t.Errorf("Load(good) = %v", err)
	}
	_, err := Load(bad)
	var ve *ValidationError
	if err == nil || !strings.Contains(err.Error(), bad) || !errors.As(err, &ve) {
		t.Errorf("Load(bad) = %v, want an error naming %s wrapping *ValidationError", err, bad)
	}
	missing := filepath.Join(dir, "missing.yaml")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v", err)
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    Duration
		str     string
		wantErr string
	}{
		{"30s", Duration(30 * time.Second), "30s", ""},
		{"10m", Duration(10 * time.Minute), "10m", ""},
		{"1h30m", Duration(90 * time.Minute), "1h30m", ""},
		{"1h", Duration(time.Hour), "1h", ""},
		{"1h0m5s", Duration(time.Hour + 5*time.Second), "1h0m5s", ""},
		{"500ms", Duration(500 * time.Millisecond), "500ms", ""},
		{"0", 0, "0s", ""},
		{"0s", 0, "0s", ""},
		{"30", 0, "", `must be a duration like "30s", got "30"`},
		{"1.5", 0, "", `got "1.5"`},
		{"-5s", 0, "", `must not be negative, got "-5s"`},
		{"", 0, "", `got ""`},
		{"forever", 0, "", `got "forever"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			d, err := ParseDuration(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDuration(%q) = %v, %v; want error %q", tt.in, d, err, tt.wantErr)
				}
				return
			}
			if err != nil || d != tt.want || d.String() != tt.str || d.D() != time.Duration(tt.want) {
				t.Fatalf("ParseDuration(%q) = %v (%s), %v; want %v (%s)", tt.in, d, d, err, tt.want, tt.str)
			}
			// YAML and JSON marshal as the string form, and read it back.
			y, err := yaml.Marshal(struct{ D Duration }{d})
			if err != nil || strings.TrimSpace(string(y)) != "d: "+tt.str {
				t.Errorf("yaml.Marshal = %q, %v", y, err)
			}
			j, err := json.Marshal(d)
			if err != nil || string(j) != `"`+tt.str+`"` {
				t.Errorf("json.Marshal = %s, %v", j, err)
			}
			var back Duration
			if err := json.Unmarshal(j, &back); err != nil || back != d {
				t.Errorf("json round trip = %v, %v", back, err)
			}
		})
	}
	var d Duration
	if err := json.Unmarshal([]byte(`30`), &d); err == nil {
		t.Error("json.Unmarshal(30) succeeded, want error")
	}
}

func TestConfigJSONHidesSecrets(t *testing.T) {
	b, err := json.Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, secret := range []string{"ann-pass", "ccmesh-admin-token-change-me", "api_tokens"} {
		if strings.Contains(s, secret) {
			t.Errorf("JSON contains %q", secret)
		}
	}
	if !strings.Contains(s, `"drain_timeout":"30s"`) || !strings.Contains(s, `"max_wait":"10m"`) {
		t.Errorf("JSON durations not strings: %s", s)
	}
}

// examplesDir holds the operator-facing example configurations.
const examplesDir = "../../examples"

// exampleFiles returns every *.yaml under examplesDir, recursively.
func exampleFiles(tb testing.TB) []string {
	tb.Helper()
	var files []string
	err := filepath.WalkDir(examplesDir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if len(files) == 0 {
		tb.Fatalf("no *.yaml under %s", examplesDir)
	}
	return files
}

// TestExamplesValid loads every example so examples stay valid as the schema grows.
func TestExamplesValid(t *testing.T) {
	for _, f := range exampleFiles(t) {
		t.Run(filepath.ToSlash(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range c.Queues {
				if _, err := CompileHours(q.BusinessHours); err != nil {
					t.Errorf("queue %s: %v", q.ID, err)
				}
			}
		})
	}
}

func TestSingleNodeExampleIsDefault(t *testing.T) {
	c, err := Load(filepath.Join(examplesDir, "single-node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); !reflect.DeepEqual(c, want) {
		gj, _ := json.MarshalIndent(c, "", " ")
		wj, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("examples/single-node.yaml differs from Default():\n%s\nwant:\n%s", gj, wj)
	}
}

// FuzzParse checks that Parse never panics, that whatever it accepts validates
// again, and that an accepted configuration survives a YAML round trip.
func FuzzParse(f *testing.F) {
	for _, path := range exampleFiles(f) {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(""))
	f.Add([]byte("node: {id: x}\n---\n"))
	f.Add([]byte("node:\n  drain_timeout: 30\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not re-validate: %v", err)
		}
		for _, q := range c.Queues {
			if _, err := CompileHours(q.BusinessHours); err != nil {
				t.Fatalf("validated business hours do not compile: %v", err)
			}
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("yaml.Marshal: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled config: %v\n%s", err, out)
		}
		// Compare marshalled forms: nil and empty slices are equivalent.
		if out2, _ := yaml.Marshal(c2); string(out) != string(out2) {
			t.Fatalf("round trip changed the config:\n%s\nbecame:\n%s", out, out2)
		}
	})
}
