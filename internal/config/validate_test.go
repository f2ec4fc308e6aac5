package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

func sec(n float64) Duration { return Duration(n * float64(time.Second)) }

func withHours(c *Config) *BusinessHours {
	c.Queues[0].BusinessHours = &BusinessHours{
		TimeZone: "Europe/Paris",
		Open:     []OpenWindow{{Days: []string{"mon", "tue"}, From: "09:00", To: "17:00"}},
	}
	return c.Queues[0].BusinessHours
}

// TestValidateMessages has one case per validation message. Each mutates a
// valid Default() and expects a problem at exactly field whose message
// contains every string in want (the bad value, and key words).
func TestValidateMessages(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		field  string
		want   []string
		// more allows other (consequential) problems besides the expected one.
		more bool
	}{
		{"node id pattern", func(c *Config) { c.Node.ID = "Node_1" }, "node.id", []string{`invalid id "Node_1"`}, false},
		{"node id empty", func(c *Config) { c.Node.ID = "" }, "node.id", []string{`invalid id ""`}, false},
		{"node id too long", func(c *Config) { c.Node.ID = core.NodeID(strings.Repeat("a", 65)) }, "node.id", []string{strings.Repeat("a", 65)}, false},
		{"data dir empty", func(c *Config) { c.Node.DataDir = " " }, "node.data_dir", []string{"must not be empty"}, false},
		{"drain timeout negative", func(c *Config) { c.Node.DrainTimeout = sec(-1) }, "node.drain_timeout", []string{"must be > 0", `"-1s"`}, false},
		{"listen without port", func(c *Config) { c.HTTP.Listen = "localhost" }, "http.listen", []string{`"localhost"`, "host:port"}, false},
		{"listen port range", func(c *Config) { c.HTTP.Listen = "127.0.0.1:70000" }, "http.listen", []string{`"70000"`, "0..65535"}, false},
		{"listen port not a number", func(c *Config) { c.HTTP.Listen = ":http" }, "http.listen", []string{`"http"`}, false},
		{"missed offer", func(c *Config) { c.Routing.MissedOffer = "ignore" }, "routing.missed_offer", []string{`unknown action "ignore"`, "not_ready, ready"}, false},
		{"max waiting", func(c *Config) { c.Routing.MaxWaiting = -5 }, "routing.max_waiting", []string{"must be >= 1, got -5"}, false},
		{"decision candidates", func(c *Config) { c.Routing.DecisionCandidates = 101 }, "routing.decision_candidates", []string{"101 out of range 1..100"}, false},
		{"token name empty", func(c *Config) { c.APITokens[1].Name = "" }, "api_tokens[1].name", []string{"must not be empty"}, false},
		{"token name duplicate", func(c *Config) { c.APITokens[1].Name = "admin" }, "api_tokens[1].name", []string{`duplicate name "admin"`, "api_tokens[0]"}, false},
		{"token too short", func(c *Config) { c.APITokens[1].Token = "short" }, "api_tokens[1].token", []string{"too short: 5 characters", "16"}, false},
		{"token duplicate", func(c *Config) { c.APITokens[1].Token = c.APITokens[0].Token }, "api_tokens[1].token", []string{"same token as api_tokens[0]"}, false},
		{"token role", func(c *Config) { c.APITokens[0].Role = "root" }, "api_tokens[0].role", []string{`unknown role "root"`, "supervisor, admin, integrator"}, false},
		{"no agents", func(c *Config) { c.Agents = nil }, "agents", []string{"at least one agent"}, true},
		{"no queues", func(c *Config) { c.Queues = nil }, "queues", []string{"at least one queue"}, false},
		{"agent id pattern", func(c *Config) { c.Agents[3].ID = "Dev!" }, "agents[3].id", []string{`invalid id "Dev!"`}, false},
		{"agent id duplicate", func(c *Config) { c.Agents[1].ID = "ann" }, "agents[1].id", []string{`duplicate id "ann"`, "agents[0]"}, false},
		{"agent dn pattern", func(c *Config) { c.Agents[2].DN = "12a" }, "agents[2].dn", []string{`invalid dn "12a"`, "2..15 digits"}, false},
		{"agent dn too short", func(c *Config) { c.Agents[2].DN = "7" }, "agents[2].dn", []string{`invalid dn "7"`}, false},
		{"agent dn duplicate", func(c *Config) { c.Agents[2].DN = "1001" }, "agents[2].dn", []string{`duplicate dn "1001"`, "agents[0]"}, false},
		{"queue dn clashes with agent", func(c *Config) { c.Queues[1].DN = "1001" }, "queues[1].dn", []string{`duplicate dn "1001"`, "agents[0]"}, false},
		{"agent password", func(c *Config) { c.Agents[0].Password = "" }, "agents[0].password", []string{"must not be empty"}, false},
		{"agent skill name", func(c *Config) { c.Agents[0].Skills["French"] = 3 }, "agents[0].skills", []string{`invalid skill name "French"`}, false},
		{"agent skill level", func(c *Config) { c.Agents[3].Skills["french"] = 12 }, "agents[3].skills.french", []string{"level 12 out of range 0..10"}, false},
		{"agent skill level negative", func(c *Config) { c.Agents[3].Skills["french"] = -1 }, "agents[3].skills.french", []string{"level -1 out of range 0..10"}, false},
		{"capacity channel", func(c *Config) { c.Agents[0].Capacity["fax"] = 1 }, "agents[0].capacity", []string{`unknown channel "fax"`, "voice, chat, callback, task"}, false},
		{"capacity chat", func(c *Config) { c.Agents[0].Capacity[core.ChannelChat] = 101 }, "agents[0].capacity.chat", []string{"101 out of range 0..100"}, false},
		{"capacity negative", func(c *Config) { c.Agents[0].Capacity[core.ChannelTask] = -1 }, "agents[0].capacity.task", []string{"-1 out of range 0..100"}, false},
		{"capacity voice", func(c *Config) { c.Agents[0].Capacity[core.ChannelVoice] = 2 }, "agents[0].capacity.voice", []string{"2 out of range 0..1"}, false},
		{"capacity callback", func(c *Config) { c.Agents[0].Capacity[core.ChannelCallback] = 2 }, "agents[0].capacity.callback", []string{"2 out of range 0..1"}, false},
		{"im protocol", func(c *Config) { c.Agents[1].IMProtocols[1] = "irc" }, "agents[1].im_protocols[1]", []string{`unknown protocol "irc"`, "xmpp, sip, webchat"}, false},
		{"im protocol duplicate", func(c *Config) { c.Agents[1].IMProtocols[1] = "xmpp" }, "agents[1].im_protocols[1]", []string{`duplicate protocol "xmpp"`}, false},
		{"queue id pattern", func(c *Config) { c.Queues[0].ID = "Sales" }, "queues[0].id", []string{`invalid id "Sales"`}, true},
		{"queue id duplicate", func(c *Config) { c.Queues[1].ID = "sales" }, "queues[1].id", []string{`duplicate id "sales"`, "queues[0]"}, true},
		{"queue dn", func(c *Config) { c.Queues[0].DN = "" }, "queues[0].dn", []string{`invalid dn ""`}, false},
		{"queue dn duplicate", func(c *Config) { c.Queues[1].DN = "2001" }, "queues[1].dn", []string{`duplicate dn "2001"`, "queues[0]"}, false},
		{"queue address", func(c *Config) { c.Queues[0].Address = "tel:+331234" }, "queues[0].address", []string{`invalid address "tel:+331234"`, "sip:"}, false},
		{"queue address empty uri", func(c *Config) { c.Queues[0].Address = "sip:" }, "queues[0].address", []string{`invalid address "sip:"`}, false},
		{"queue unknown skill", func(c *Config) { c.Queues[0].Skills["frnch"] = 2 }, "queues[0].skills", []string{`unknown skill "frnch"`, "no agent has skill"}, false},
		{"queue skill name", func(c *Config) { c.Queues[0].Skills["Sales"] = 2 }, "queues[0].skills", []string{`invalid skill name "Sales"`}, false},
		{"queue skill level", func(c *Config) { c.Queues[0].Skills["sales"] = 11 }, "queues[0].skills.sales", []string{"level 11 out of range 0..10"}, false},
		{"queue priority", func(c *Config) { c.Queues[0].Priority = 101 }, "queues[0].priority", []string{"101 out of range 0..100"}, false},
		{"queue strategy", func(c *Config) { c.Queues[1].Strategy = "fastest" }, "queues[1].strategy",
			[]string{`unknown strategy "fastest" (want one of longest-idle, most-skilled, round-robin, least-occupied)`}, false},
		{"queue max wait", func(c *Config) { c.Queues[0].MaxWait = sec(-1) }, "queues[0].max_wait", []string{`must be >= 0, got "-1s"`}, false},
		{"sl threshold", func(c *Config) { c.Queues[0].ServiceLevel.Threshold = sec(-2) }, "queues[0].service_level.threshold", []string{`must be > 0, got "-2s"`}, false},
		{"sl target", func(c *Config) { c.Queues[0].ServiceLevel.TargetPercent = 101 }, "queues[0].service_level.target_percent", []string{"101 out of range 0..100"}, false},
		{"overflow after zero", func(c *Config) { c.Queues[0].Overflow[0].After = 0 }, "queues[0].overflow[0].after", []string{`must be > 0, got "0s"`}, false},
		{"overflow after not increasing", func(c *Config) { c.Queues[0].Overflow[1].After = sec(30) }, "queues[0].overflow[1].after", []string{`"30s" must be after`, `"1m"`}, false},
		{"overflow after equal", func(c *Config) { c.Queues[0].Overflow[1].After = sec(60) }, "queues[0].overflow[1].after", []string{`"1m" must be after`}, false},
		{"overflow relax", func(c *Config) { c.Queues[0].Overflow[0].Relax = 11 }, "queues[0].overflow[0].relax", []string{"11 out of range 0..10"}, false},
		{"overflow unknown queue", func(c *Config) { c.Queues[0].Overflow[1].AddQueues[0] = "nope" }, "queues[0].overflow[1].add_queues[0]", []string{`unknown queue "nope"`}, false},
		{"closed target unknown", func(c *Config) { c.Queues[0].ClosedTarget = "nope" }, "queues[0].closed_target", []string{`unknown queue "nope"`}, false},
		{"closed target itself", func(c *Config) { c.Queues[0].ClosedTarget = "sales" }, "queues[0].closed_target", []string{`"sales" cannot be its own closed target`}, false},
		{"answer mode", func(c *Config) { c.Queues[0].AnswerMode = "ring" }, "queues[0].answer_mode", []string{`unknown mode "ring"`}, false},
		{"media mode", func(c *Config) { c.Queues[0].Media = "p2p" }, "queues[0].media", []string{`unknown mode "p2p"`}, false},
		{"answer with direct media", func(c *Config) { c.Queues[0].Media, c.Queues[0].AnswerMode = "direct", "answer" }, "queues[0].answer_mode", []string{"answer needs media anchored"}, false},
		{"overflow to itself", func(c *Config) { c.Queues[0].Overflow[1].AddQueues[0] = "sales" }, "queues[0].overflow[1].add_queues[0]", []string{`"sales" cannot overflow to itself`}, false},
		{"overflow step does nothing", func(c *Config) { c.Queues[0].Overflow[0].Relax = 0 }, "queues[0].overflow[0]", []string{`after "1m" does nothing`}, false},
		{"wrap up", func(c *Config) { c.Queues[0].WrapUp = ptr(sec(-1)) }, "queues[0].wrap_up", []string{`must be >= 0, got "-1s"`}, false},
		{"offer timeout low", func(c *Config) { c.Queues[0].OfferTimeout = sec(0.5) }, "queues[0].offer_timeout", []string{`"500ms" out of range 1s..10m`}, false},
		{"offer timeout high", func(c *Config) { c.Queues[0].OfferTimeout = sec(660) }, "queues[0].offer_timeout", []string{`"11m" out of range 1s..10m`}, false},
		{"hours timezone", func(c *Config) { withHours(c).TimeZone = "Mars/Olympus" }, "queues[0].business_hours.timezone", []string{`unknown time zone "Mars/Olympus"`}, false},
		{"hours timezone empty", func(c *Config) { withHours(c).TimeZone = "" }, "queues[0].business_hours.timezone", []string{`unknown time zone ""`}, false},
		{"hours no window", func(c *Config) { withHours(c).Open = nil }, "queues[0].business_hours.open", []string{"at least one open window"}, false},
		{"hours no days", func(c *Config) { withHours(c).Open[0].Days = nil }, "queues[0].business_hours.open[0].days", []string{"at least one day"}, false},
		{"hours day", func(c *Config) { withHours(c).Open[0].Days[1] = "funday" }, "queues[0].business_hours.open[0].days[1]", []string{`unknown day "funday"`}, false},
		{"hours from", func(c *Config) { withHours(c).Open[0].From = "25:00" }, "queues[0].business_hours.open[0].from", []string{`invalid time "25:00"`, "HH:MM"}, false},
		{"hours to", func(c *Config) { withHours(c).Open[0].To = "5pm" }, "queues[0].business_hours.open[0].to", []string{`invalid time "5pm"`}, false},
		{"hours from 24:00", func(c *Config) { withHours(c).Open[0].From = "24:00" }, "queues[0].business_hours.open[0].from", []string{`invalid time "24:00"`}, false},
		{"hours to before from", func(c *Config) { withHours(c).Open[0].To = "09:00" }, "queues[0].business_hours.open[0].to", []string{`"09:00" must be after from "09:00"`}, false},
		{"hours closed date", func(c *Config) { withHours(c).ClosedDates = []string{"2026-12-25", "2026-13-01"} }, "queues[0].business_hours.closed_dates[1]", []string{`invalid date "2026-13-01"`, "YYYY-MM-DD"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(c)
			err := c.Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want *ValidationError", err)
			}
			found := false
			for _, p := range ve.Problems {
				if p.Field != tt.field {
					continue
				}
				found = true
				for _, w := range tt.want {
					if !strings.Contains(p.Message, w) {
						t.Errorf("%s: message %q does not contain %q", p.Field, p.Message, w)
					}
				}
			}
			if !found {
				t.Errorf("no problem at %s; got:\n%v", tt.field, err)
			}
			if !tt.more && len(ve.Problems) != 1 {
				t.Errorf("want exactly one problem, got %d:\n%v", len(ve.Problems), err)
			}
		})
	}
}

func TestValidateTokenNotLeaked(t *testing.T) {
	c := Default()
	c.APITokens[0].Token = "s3cr3t"
	c.APITokens[1].Token = c.APITokens[0].Token
	err := c.Validate()
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("Validate() = %v; want an error that does not quote the secret", err)
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	c := Default()
	c.Node.ID = "BAD"
	c.Agents[3].Skills["french"] = 12
	c.Queues[1].Strategy = "fastest"
	err := c.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate() = %v", err)
	}
	want := []string{
		`node.id: invalid id "BAD"`,
		"agents[3].skills.french: level 12 out of range 0..10",
		`queues[1].strategy: unknown strategy "fastest"`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) || len(ve.Problems) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestDefaultValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if len(c.Agents) != 10 || len(c.Queues) != 2 || len(c.APITokens) != 2 {
		t.Fatalf("Default(): %d agents, %d queues, %d tokens", len(c.Agents), len(c.Queues), len(c.APITokens))
	}
	// Both queues need several eligible agents.
	for _, q := range c.Queues {
		n := 0
		for _, a := range c.Agents {
			ok := true
			for s, min := range q.Skills {
				if lv, has := a.Skills[s]; !has || lv < min {
					ok = false
				}
			}
			if ok {
				n++
			}
		}
		if n < 3 {
			t.Errorf("queue %s: %d eligible agents, want >= 3", q.ID, n)
		}
	}
	if Default() == Default() || &Default().Agents[0] == &Default().Agents[0] {
		t.Error("Default() must return a fresh value each call")
	}
}
