package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/media"
)

// FieldError is one validation problem: the path of the field, e.g.
// "agents[3].skills.french" (indexes start at 0), and what is wrong with it.
type FieldError struct {
	// Field is the path of the field in the configuration file.
	Field string
	// Message says what is wrong and quotes the bad value (never a secret).
	Message string
}

// String returns "field: message".
func (e FieldError) String() string { return e.Field + ": " + e.Message }

// ValidationError lists every problem Validate found, in file order.
type ValidationError struct {
	// Problems holds one entry per problem; it is never empty.
	Problems []FieldError
}

// Error returns one "field: message" line per problem.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

var (
	nodeIDRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	objectIDRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	dnRE        = regexp.MustCompile(`^[0-9]{2,15}$`)
	skillNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
	hhmmRE      = regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]$`)
)

// Roles lists every API role.
var Roles = []Role{RoleSupervisor, RoleAdmin, RoleIntegrator}

// weekdays maps the day names of business hours to time.Weekday.
var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

const (
	minOfferTimeout = Duration(time.Second)
	maxOfferTimeout = Duration(10 * time.Minute)
	maxSkillLevel   = 10
	maxPriority     = 100
	maxCapacity     = 100
	maxDecisionCand = 100
)

type problems struct{ list []FieldError }

func (p *problems) add(field, format string, args ...any) {
	p.list = append(p.list, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func join[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	return strings.Join(s, ", ")
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Validate checks the whole configuration (after ApplyDefaults) and returns a
// *ValidationError listing every problem, or nil.
func (c *Config) Validate() error {
	var p problems
	c.validateNode(&p)
	c.validateSIP(&p)
	c.validateTokens(&p)
	dns := map[core.DN]string{} // DN → field path of its first holder
	checkDN := func(field string, dn core.DN) {
		if !dnRE.MatchString(string(dn)) {
			p.add(field, "invalid dn %q (want 2..15 digits)", dn)
			return
		}
		if prev, ok := dns[dn]; ok {
			p.add(field, "duplicate dn %q (already used by %s)", dn, prev)
			return
		}
		dns[dn] = strings.TrimSuffix(field, ".dn")
	}
	agentSkills := c.validateAgents(&p, checkDN)
	c.validateQueues(&p, checkDN, agentSkills)
	c.validateCluster(&p)
	c.validateResources(&p)
	if len(p.list) == 0 {
		return nil
	}
	return &ValidationError{Problems: p.list}
}

func (c *Config) validateNode(p *problems) {
	if !nodeIDRE.MatchString(string(c.Node.ID)) {
		p.add("node.id", "invalid id %q (want 1..64 of a-z 0-9 -, not starting with -)", c.Node.ID)
	}
	if strings.TrimSpace(c.Node.DataDir) == "" {
		p.add("node.data_dir", "must not be empty")
	}
	if c.Node.DrainTimeout <= 0 {
		p.add("node.drain_timeout", "must be > 0, got %q", c.Node.DrainTimeout)
	}
	if host, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		p.add("http.listen", "invalid address %q (want host:port, e.g. 127.0.0.1:8080)", c.HTTP.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add("http.listen", "invalid port %q in %q (want 0..65535)", port, c.HTTP.Listen)
	} else if strings.ContainsAny(host, " /") {
		p.add("http.listen", "invalid host %q in %q", host, c.HTTP.Listen)
	}
	switch c.Routing.MissedOffer {
	case MissedOfferNotReady, MissedOfferReady:
	default:
		p.add("routing.missed_offer", "unknown action %q (want one of not_ready, ready)", c.Routing.MissedOffer)
	}
	if c.Routing.MaxWaiting < 1 {
		p.add("routing.max_waiting", "must be >= 1, got %d", c.Routing.MaxWaiting)
	}
	if n := c.Routing.DecisionCandidates; n < 1 || n > maxDecisionCand {
		p.add("routing.decision_candidates", "%d out of range 1..%d", n, maxDecisionCand)
	}
}

func (c *Config) validateTokens(p *problems) {
	names := map[string]int{}
	tokens := map[string]int{}
	for i, t := range c.APITokens {
		f := fmt.Sprintf("api_tokens[%d]", i)
		if strings.TrimSpace(t.Name) == "" {
			p.add(f+".name", "must not be empty")
		} else if j, ok := names[t.Name]; ok {
			p.add(f+".name", "duplicate name %q (also api_tokens[%d])", t.Name, j)
		} else {
			names[t.Name] = i
		}
		// The secret itself is never quoted in messages.
		if n := len(t.Token); n < 16 {
			p.add(f+".token", "too short: %d characters, want at least 16", n)
		} else if j, ok := tokens[t.Token]; ok {
			p.add(f+".token", "same token as api_tokens[%d]", j)
		} else {
			tokens[t.Token] = i
		}
		if !slices.Contains(Roles, t.Role) {
			p.add(f+".role", "unknown role %q (want one of %s)", t.Role, join(Roles))
		}
	}
}

// validateAgents checks the agents and returns every skill held by some agent.
func (c *Config) validateAgents(p *problems, checkDN func(string, core.DN)) map[core.SkillName]bool {
	held := map[core.SkillName]bool{}
	if len(c.Agents) == 0 {
		p.add("agents", "at least one agent is required")
	}
	ids := map[core.AgentID]int{}
	for i, a := range c.Agents {
		f := fmt.Sprintf("agents[%d]", i)
		if !objectIDRE.MatchString(string(a.ID)) {
			p.add(f+".id", "invalid id %q (want 1..64 of a-z 0-9 . _ -, starting with a letter or digit)", a.ID)
		} else if j, ok := ids[a.ID]; ok {
			p.add(f+".id", "duplicate id %q (also agents[%d])", a.ID, j)
		} else {
			ids[a.ID] = i
		}
		checkDN(f+".dn", a.DN)
		if a.Password == "" {
			p.add(f+".password", "must not be empty")
		}
		validateSkills(p, f+".skills", a.Skills)
		for s := range a.Skills {
			held[s] = true
		}
		for _, ch := range sortedKeys(a.Capacity) {
			v := a.Capacity[ch]
			cf := f + ".capacity." + string(ch)
			if _, err := core.ParseChannel(string(ch)); err != nil {
				p.add(f+".capacity", "%v", err)
				continue
			}
			limit := maxCapacity
			if ch == core.ChannelVoice || ch == core.ChannelCallback {
				limit = 1
			}
			if v < 0 || v > limit {
				p.add(cf, "%d out of range 0..%d", v, limit)
			}
		}
		seen := map[core.IMProtocol]bool{}
		for j, proto := range a.IMProtocols {
			pf := fmt.Sprintf("%s.im_protocols[%d]", f, j)
			switch {
			case !slices.Contains(core.IMProtocols, proto):
				p.add(pf, "unknown protocol %q (want one of %s)", proto, join(core.IMProtocols))
			case seen[proto]:
				p.add(pf, "duplicate protocol %q", proto)
			}
			seen[proto] = true
		}
	}
	return held
}

func validateSkills(p *problems, f string, skills map[core.SkillName]int) {
	for _, s := range sortedKeys(skills) {
		if !skillNameRE.MatchString(string(s)) {
			p.add(f, "invalid skill name %q (want 1..32 of a-z 0-9 _ -, starting with a letter or digit)", s)
			continue
		}
		if lv := skills[s]; lv < 0 || lv > maxSkillLevel {
			p.add(f+"."+string(s), "level %d out of range 0..%d", lv, maxSkillLevel)
		}
	}
}

func (c *Config) validateQueues(p *problems, checkDN func(string, core.DN), held map[core.SkillName]bool) {
	if len(c.Queues) == 0 {
		p.add("queues", "at least one queue is required")
	}
	ids := map[core.QueueID]bool{}
	for _, q := range c.Queues {
		ids[q.ID] = true
	}
	seenIDs := map[core.QueueID]int{}
	for i, q := range c.Queues {
		f := fmt.Sprintf("queues[%d]", i)
		if !objectIDRE.MatchString(string(q.ID)) {
			p.add(f+".id", "invalid id %q (want 1..64 of a-z 0-9 . _ -, starting with a letter or digit)", q.ID)
		} else if j, ok := seenIDs[q.ID]; ok {
			p.add(f+".id", "duplicate id %q (also queues[%d])", q.ID, j)
		} else {
			seenIDs[q.ID] = i
		}
		checkDN(f+".dn", q.DN)
		if !validAddress(q.Address) {
			p.add(f+".address", "invalid address %q (want a sip: or sips: URI, or nothing)", q.Address)
		}
		validateSkills(p, f+".skills", q.Skills)
		for _, s := range sortedKeys(q.Skills) {
			if skillNameRE.MatchString(string(s)) && !held[s] {
				p.add(f+".skills", "unknown skill %q (no agent has skill %q)", s, s)
			}
		}
		if q.Priority < 0 || q.Priority > maxPriority {
			p.add(f+".priority", "%d out of range 0..%d", q.Priority, maxPriority)
		}
		if !slices.Contains(Strategies, q.Strategy) {
			p.add(f+".strategy", "unknown strategy %q (want one of %s)", q.Strategy, join(Strategies))
		}
		if q.MaxWait < 0 {
			p.add(f+".max_wait", "must be >= 0, got %q", q.MaxWait)
		}
		if q.ServiceLevel.Threshold <= 0 {
			p.add(f+".service_level.threshold", "must be > 0, got %q", q.ServiceLevel.Threshold)
		}
		if t := q.ServiceLevel.TargetPercent; t < 0 || t > 100 {
			p.add(f+".service_level.target_percent", "%d out of range 0..100", t)
		}
		var prev Duration
		for j, st := range q.Overflow {
			sf := fmt.Sprintf("%s.overflow[%d]", f, j)
			if st.After <= 0 {
				p.add(sf+".after", "must be > 0, got %q", st.After)
			} else if j > 0 && st.After <= prev {
				p.add(sf+".after", "%q must be after the previous step's %q", st.After, prev)
			}
			prev = st.After
			if st.Relax < 0 || st.Relax > maxSkillLevel {
				p.add(sf+".relax", "%d out of range 0..%d", st.Relax, maxSkillLevel)
			}
			for k, aq := range st.AddQueues {
				af := fmt.Sprintf("%s.add_queues[%d]", sf, k)
				if aq == q.ID {
					p.add(af, "queue %q cannot overflow to itself", aq)
				} else if !ids[aq] {
					p.add(af, "unknown queue %q", aq)
				}
			}
			if st.Relax == 0 && len(st.AddQueues) == 0 && st.To == "" {
				p.add(sf, "step after %q does nothing (set relax > 0, add_queues or to)", st.After)
			}
		}
		if q.WrapUp != nil && *q.WrapUp < 0 {
			p.add(f+".wrap_up", "must be >= 0, got %q", *q.WrapUp)
		}
		if q.OfferTimeout < minOfferTimeout || q.OfferTimeout > maxOfferTimeout {
			p.add(f+".offer_timeout", "%q out of range %s..%s", q.OfferTimeout, minOfferTimeout, maxOfferTimeout)
		}
		if q.BusinessHours != nil {
			validateHours(p, f+".business_hours", q.BusinessHours)
		}
		if q.ClosedTarget == q.ID {
			p.add(f+".closed_target", "queue %q cannot be its own closed target", q.ClosedTarget)
		} else if q.ClosedTarget != "" && !ids[q.ClosedTarget] {
			p.add(f+".closed_target", "unknown queue %q", q.ClosedTarget)
		}
		if q.AnswerMode != AnswerEarlyMedia && q.AnswerMode != AnswerFirst {
			p.add(f+".answer_mode", "unknown mode %q (want early_media or answer)", q.AnswerMode)
		}
		switch {
		case q.Media != MediaAnchored && q.Media != MediaDirect:
			p.add(f+".media", "unknown mode %q (want anchored or direct)", q.Media)
		case q.Media == MediaDirect && q.AnswerMode == AnswerFirst:
			p.add(f+".answer_mode", "answer needs media anchored (with media direct there is nothing to play)")
		}
		for name, path := range map[string]string{"announcement": q.Sounds.Announcement, "music": q.Sounds.Music, "closed": q.Sounds.Closed} {
			if path == "" {
				continue
			}
			// The file is read now so that `ccmesh check` catches a wrong format.
			// Missing here with sounds.from set: the peer's plays instead.
			if _, err := media.LoadWAVFile(path); err != nil && !(q.Sounds.From != "" && errors.Is(err, fs.ErrNotExist)) {
				p.add(f+".sounds."+name, "%v", err)
			}
		}
	}
}

func validateHours(p *problems, f string, b *BusinessHours) {
	if _, err := time.LoadLocation(b.TimeZone); err != nil || b.TimeZone == "" || b.TimeZone == "Local" {
		p.add(f+".timezone", "unknown time zone %q (want an IANA name such as Europe/Paris or UTC)", b.TimeZone)
	}
	if len(b.Open) == 0 {
		p.add(f+".open", "at least one open window is required")
	}
	for i, w := range b.Open {
		wf := fmt.Sprintf("%s.open[%d]", f, i)
		if len(w.Days) == 0 {
			p.add(wf+".days", "at least one day is required (mon tue wed thu fri sat sun)")
		}
		for j, d := range w.Days {
			if _, ok := weekdays[d]; !ok {
				p.add(fmt.Sprintf("%s.days[%d]", wf, j), "unknown day %q (want one of mon, tue, wed, thu, fri, sat, sun)", d)
			}
		}
		from, okFrom := parseHHMM(w.From, false)
		to, okTo := parseHHMM(w.To, true)
		if !okFrom {
			p.add(wf+".from", "invalid time %q (want HH:MM, 00:00..23:59)", w.From)
		}
		if !okTo {
			p.add(wf+".to", "invalid time %q (want HH:MM, 00:01..24:00)", w.To)
		}
		if okFrom && okTo && to <= from {
			p.add(wf+".to", "%q must be after from %q", w.To, w.From)
		}
	}
	for i, d := range b.ClosedDates {
		if _, err := time.Parse(time.DateOnly, d); err != nil {
			p.add(fmt.Sprintf("%s.closed_dates[%d]", f, i), "invalid date %q (want YYYY-MM-DD)", d)
		}
	}
}

// parseHHMM returns minutes since midnight. "24:00" is accepted only as an end.
func parseHHMM(s string, end bool) (int, bool) {
	if end && s == "24:00" {
		return 24 * 60, true
	}
	if !hhmmRE.MatchString(s) {
		return 0, false
	}
	h, _ := strconv.Atoi(s[:2])
	m, _ := strconv.Atoi(s[3:])
	return h*60 + m, true
}

// validAddress reports whether s is empty or a non-empty sip: or sips: URI.
func validAddress(s string) bool {
	if s == "" {
		return true
	}
	for _, scheme := range []string{"sip:", "sips:"} {
		if rest, ok := strings.CutPrefix(s, scheme); ok {
			return rest != "" && !strings.ContainsAny(rest, " \t\r\n")
		}
	}
	return false
}
