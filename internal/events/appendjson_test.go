package events

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// checkAppendJSON fails t unless AppendJSON(prefix, v) is prefix followed by
// json.Marshal(v), or both fail with the same message and dst is unchanged.
func checkAppendJSON(t testing.TB, v any) {
	t.Helper()
	want, wantErr := json.Marshal(v)
	for _, prefix := range [][]byte{nil, []byte("prefix:"), append(make([]byte, 0, 4096), "cap:"...)} {
		n := len(prefix)
		p := append([]byte(nil), prefix...)
		got, err := AppendJSON(prefix, v)
		if (err != nil) != (wantErr != nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("%#v:\nerror %v\nwant  %v", v, err, wantErr)
		}
		if err != nil {
			if !bytes.Equal(got, p) {
				t.Fatalf("%#v: dst %q after error, want %q", v, got, p)
			}
			continue
		}
		if !bytes.Equal(got[:n], p) {
			t.Fatalf("%#v: prefix %q became %q", v, p, got[:n])
		}
		if !bytes.Equal(got[n:], want) {
			t.Fatalf("%#v:\ngot  %s\nwant %s", v, got[n:], want)
		}
	}
}

// checkBoth checks a payload as a value and as a pointer.
func checkBoth(t testing.TB, v any) {
	t.Helper()
	checkAppendJSON(t, v)
	p := reflect.New(reflect.TypeOf(v))
	p.Elem().Set(reflect.ValueOf(v))
	checkAppendJSON(t, p.Interface())
}

var (
	trickyStrings = []string{
		"", "a", "voice", `"quoted"`, `back\slash`, "\x00", "\x01\x1f", "\b\f\n\r\t", "\x0b\x7f",
		"<script>alert('x')</script>", "a&b", "é", "日本語", "😀", "\u2028", "\u2029", "x\u2028y\u2029z",
		"\ufffd", "\xff", "\xc3", "a\xe2\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xffok", "\u00ff\u0100",
	}
	tzUTC   = time.UTC
	tzPlus  = time.FixedZone("IST", 5*3600+30*60)
	tzMinus = time.FixedZone("PST", -8*3600)
	tzSecs  = time.FixedZone("LMT", 30)
	tzAll   = []*time.Location{tzUTC, tzPlus, tzMinus, tzSecs, time.FixedZone("bad", 24*3600), time.FixedZone("worse", -100*3600)}
)

func trickyTimes() []time.Time {
	return []time.Time{
		{},
		time.Date(2024, 5, 6, 7, 8, 9, 0, tzUTC),
		time.Date(2024, 5, 6, 7, 8, 9, 120000000, tzPlus),
		time.Date(2024, 5, 6, 7, 8, 9, 1, tzMinus),
		time.Date(2024, 5, 6, 7, 8, 9, 999999999, tzSecs),
		time.Date(0, 1, 1, 0, 0, 0, 0, tzUTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, tzUTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, tzUTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, tzUTC),
		time.Date(2024, 1, 1, 0, 0, 0, 0, time.FixedZone("bad", 24*3600)),
		time.Date(2024, 1, 1, 0, 0, 0, 0, time.FixedZone("worse", -100*3600)),
		time.Unix(0, 0),
		time.Now(), // monotonic reading, local zone
	}
}

var trickyFloats = []float64{
	0, math.Copysign(0, -1), 1, -1, 0.5, 1.0 / 3, 100, 1e20, 1e21, 123456789012345678901234.0,
	1e-6, 9.99e-7, 1e-7, 5e-324, math.MaxFloat64, -math.MaxFloat64, 1e-10, 1.5e-100, 1e100,
	-12, -0.25, 1e6, 42.000001,
}

func TestAppendJSONTable(t *testing.T) {
	long := strings.Repeat("x<\u2028", 300)
	tricky := append(append([]string(nil), trickyStrings...), long)
	for _, s := range tricky {
		for _, tm := range trickyTimes() {
			checkBoth(t, Interaction{
				ID: core.InteractionID(s), Channel: core.Channel(s), Queue: core.QueueID(s), Priority: -3,
				State: s, Previous: s, Agent: core.AgentID(s), Reason: s,
				CreatedAt: tm, EnqueuedAt: tm, AnsweredAt: tm, EndedAt: tm,
				Attributes: map[string]string{s: s, "b": s, "a" + s: "x", "\xff": "invalid key"}, IdempotencyKey: s,
			})
			checkBoth(t, AgentState{
				State: s, Presence: s, Reason: s, Cause: s, Version: math.MaxUint64, Epoch: 1, Fence: 0,
				Load:      []ChannelLoad{{Channel: core.Channel(s), Capacity: math.MaxInt, Offered: math.MinInt, Busy: -1, WrapUp: 0}, {}},
				IdleSince: tm,
			})
			checkBoth(t, Lease{Lease: core.LeaseID(math.MaxUint64), Epoch: 7, Channel: core.Channel(s), Outcome: s,
				TTLMillis: math.MinInt64, Request: core.RequestID(s)})
			checkBoth(t, Decision{
				Direction: s, Strategy: s, Step: 2, Queues: []core.QueueID{core.QueueID(s), ""}, Eligible: 9,
				Candidates: []Candidate{{Agent: core.AgentID(s), Score: 1.5, Why: s, Result: s}},
				Chosen:     core.AgentID(s), Outcome: s, WaitMillis: math.MaxInt64, DecisionMicros: -1,
			})
		}
	}
	// Zero values, nil against empty collections, omitempty and omitzero.
	checkBoth(t, Interaction{})
	checkBoth(t, Interaction{Attributes: map[string]string{}})
	checkBoth(t, Interaction{Attributes: map[string]string{"": ""}})
	checkBoth(t, AgentState{})
	checkBoth(t, AgentState{Load: []ChannelLoad{}, Fence: 3})
	checkBoth(t, Lease{})
	checkBoth(t, Decision{})
	checkBoth(t, Decision{Queues: []core.QueueID{}, Candidates: []Candidate{}})
	// Many attributes: more keys than appendStringMap's stack array.
	many := map[string]string{}
	for i := range 40 {
		many[fmt.Sprintf("k%02d<", 39-i)] = trickyStrings[i%len(trickyStrings)]
	}
	checkBoth(t, Interaction{Attributes: many})
	// Scores, and the Why that Decision.MarshalJSON fills in when empty.
	for _, strategy := range []string{"most-skilled", "round-robin", "least-occupied", "longest-idle", ""} {
		for _, f := range append(trickyFloats, math.NaN(), math.Inf(1), math.Inf(-1)) {
			checkBoth(t, Decision{Strategy: strategy, Candidates: []Candidate{{Agent: "ann", Score: f}, {Agent: "bob", Score: f, Why: "given"}}})
		}
	}
	// Nil pointers and other payloads go through json.Marshal.
	for _, v := range []any{(*Interaction)(nil), (*AgentState)(nil), (*Lease)(nil), (*Decision)(nil), nil,
		Node{Node: "n1", State: "started"}, &Peer{Peer: "<p>"}, Registration{}, "str", 42, math.NaN(), make(chan int)} {
		checkAppendJSON(t, v)
	}
}

// TestAppendJSONSchema pins the fields, types and tags the hand-written
// encoder knows. A change to a payload type (a new field, a new tag, a field
// type with its own marshalling) fails here until the encoder is updated.
func TestAppendJSONSchema(t *testing.T) {
	want := map[reflect.Type]string{
		reflect.TypeFor[Interaction](): `ID core.InteractionID json:"id"; Channel core.Channel json:"channel"; ` +
			`Queue core.QueueID json:"queue"; Priority int json:"priority"; State string json:"state"; ` +
			`Previous string json:"previous,omitempty"; Agent core.AgentID json:"agent,omitempty"; ` +
			`Reason string json:"reason,omitempty"; CreatedAt time.Time json:"created_at"; ` +
			`EnqueuedAt time.Time json:"enqueued_at,omitzero"; AnsweredAt time.Time json:"answered_at,omitzero"; ` +
			`EndedAt time.Time json:"ended_at,omitzero"; Attributes map[string]string json:"attributes,omitempty"; ` +
			`IdempotencyKey string json:"idempotency_key,omitempty"`,
		reflect.TypeFor[AgentState](): `State string json:"state"; Presence string json:"presence"; ` +
			`Reason string json:"reason,omitempty"; Cause string json:"cause"; Version uint64 json:"version"; ` +
			`Epoch uint64 json:"epoch"; Fence uint64 json:"fence,omitempty"; Load []events.ChannelLoad json:"load"; ` +
			`IdleSince time.Time json:"idle_since"`,
		reflect.TypeFor[ChannelLoad](): `Channel core.Channel json:"channel"; Capacity int json:"capacity"; ` +
			`Offered int json:"offered"; Busy int json:"busy"; WrapUp int json:"wrap_up"`,
		reflect.TypeFor[Lease](): `Lease core.LeaseID json:"lease"; Epoch uint64 json:"epoch"; ` +
			`Channel core.Channel json:"channel"; Outcome string json:"outcome"; ` +
			`TTLMillis int64 json:"ttl_ms,omitempty"; Request core.RequestID json:"request,omitempty"`,
		reflect.TypeFor[Decision](): `Direction string json:"direction"; Strategy string json:"strategy"; ` +
			`Step int json:"step"; Queues []core.QueueID json:"queues"; Eligible int json:"eligible"; ` +
			`Candidates []events.Candidate json:"candidates"; Chosen core.AgentID json:"chosen,omitempty"; ` +
			`Outcome string json:"outcome"; WaitMillis int64 json:"wait_ms"; DecisionMicros int64 json:"decision_us"`,
		reflect.TypeFor[Candidate](): `Agent core.AgentID json:"agent"; Score float64 json:"score"; ` +
			`Why string json:"why"; Result string json:"result"`,
	}
	marshaler := reflect.TypeFor[json.Marshaler]()
	textMarshaler := reflect.TypeFor[encoding.TextMarshaler]()
	for typ, w := range want {
		var fields []string
		for f := range typ.Fields() {
			fields = append(fields, fmt.Sprintf("%s %s %s", f.Name, f.Type, f.Tag))
			ft := f.Type
			for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Map {
				if ft.Kind() == reflect.Map && (ft.Key().Implements(textMarshaler) || ft.Key() != reflect.TypeFor[string]()) {
					t.Errorf("%s.%s: map key %s is not a plain string", typ, f.Name, ft.Key())
				}
				ft = ft.Elem()
			}
			if ft == reflect.TypeFor[time.Time]() || ft == reflect.TypeFor[ChannelLoad]() || ft == reflect.TypeFor[Candidate]() {
				continue
			}
			for _, x := range []reflect.Type{ft, reflect.PointerTo(ft)} {
				if x.Implements(marshaler) || x.Implements(textMarshaler) {
					t.Errorf("%s.%s: %s has its own marshalling; AppendJSON ignores it", typ, f.Name, x)
				}
			}
		}
		if got := strings.Join(fields, "; "); got != w {
			t.Errorf("%s changed; update appendjson.go and this test\ngot  %s\nwant %s", typ, got, w)
		}
		wantM := typ == reflect.TypeFor[Decision]()
		for _, x := range []reflect.Type{typ, reflect.PointerTo(typ)} {
			if x.Implements(marshaler) != wantM || x.Implements(textMarshaler) {
				t.Errorf("%s: marshalling methods changed; appendDecision mirrors only Decision.MarshalJSON", x)
			}
		}
	}
}

// gen draws pseudo-random payloads rich in the values encoding/json treats
// specially.
type gen struct{ r *rand.Rand }

func (g gen) str() string {
	switch g.r.IntN(8) {
	case 0:
		return ""
	case 1: // random bytes, any of them
		b := make([]byte, g.r.IntN(12))
		for i := range b {
			b[i] = byte(g.r.UintN(256))
		}
		return string(b)
	case 2: // random runes, including surrogates' replacement and U+2028/9
		var sb strings.Builder
		for range g.r.IntN(6) {
			sb.WriteRune(rune(g.r.IntN(0x2100)))
		}
		return sb.String()
	}
	var sb strings.Builder
	for range 1 + g.r.IntN(4) {
		sb.WriteString(trickyStrings[g.r.IntN(len(trickyStrings))])
	}
	return sb.String()
}

func (g gen) time() time.Time {
	switch g.r.IntN(6) {
	case 0:
		return time.Time{}
	case 1:
		ts := trickyTimes()
		return ts[g.r.IntN(len(ts))]
	case 2: // anywhere, including years far outside [0,9999]
		return time.Unix(int64(g.r.Uint64()>>g.r.UintN(64)), g.r.Int64N(2e9)-1e9).In(tzAll[g.r.IntN(len(tzAll))])
	}
	return time.Unix(1.6e9+g.r.Int64N(3e8), g.r.Int64N(1e9)).In(tzAll[g.r.IntN(4)])
}

func (g gen) int64() int64 {
	switch g.r.IntN(4) {
	case 0:
		return 0
	case 1:
		return g.r.Int64N(100) - 50
	}
	return int64(g.r.Uint64())
}

func (g gen) float() float64 {
	switch g.r.IntN(5) {
	case 0:
		return trickyFloats[g.r.IntN(len(trickyFloats))]
	case 1:
		return math.Float64frombits(g.r.Uint64()) // includes NaN and ±Inf, rarely
	case 2:
		return float64(g.r.IntN(20) - 10)
	case 3:
		return g.r.NormFloat64() * math.Pow(10, float64(g.r.IntN(60)-30))
	}
	return g.r.Float64()
}

func (g gen) attrs() map[string]string {
	switch g.r.IntN(4) {
	case 0:
		return nil
	case 1:
		return map[string]string{}
	}
	m := map[string]string{}
	for range g.r.IntN(20) {
		m[g.str()] = g.str()
	}
	return m
}

func (g gen) interaction() Interaction {
	return Interaction{
		ID: core.InteractionID(g.str()), Channel: core.Channel(g.str()), Queue: core.QueueID(g.str()),
		Priority: int(g.int64()), State: g.str(), Previous: g.str(), Agent: core.AgentID(g.str()), Reason: g.str(),
		CreatedAt: g.time(), EnqueuedAt: g.time(), AnsweredAt: g.time(), EndedAt: g.time(),
		Attributes: g.attrs(), IdempotencyKey: g.str(),
	}
}

func (g gen) agentState() AgentState {
	var load []ChannelLoad
	if n := g.r.IntN(5); n > 0 {
		load = make([]ChannelLoad, n-1)
		for i := range load {
			load[i] = ChannelLoad{Channel: core.Channel(g.str()), Capacity: int(g.int64()), Offered: int(g.int64()),
				Busy: int(g.int64()), WrapUp: int(g.int64())}
		}
	}
	return AgentState{
		State: g.str(), Presence: g.str(), Reason: g.str(), Cause: g.str(),
		Version: uint64(g.int64()), Epoch: uint64(g.int64()), Fence: uint64(g.int64()), Load: load, IdleSince: g.time(),
	}
}

func (g gen) lease() Lease {
	return Lease{Lease: core.LeaseID(g.int64()), Epoch: uint64(g.int64()), Channel: core.Channel(g.str()),
		Outcome: g.str(), TTLMillis: g.int64(), Request: core.RequestID(g.str())}
}

func (g gen) decision() Decision {
	d := Decision{
		Direction: g.str(), Strategy: g.str(), Step: int(g.int64()), Eligible: int(g.int64()),
		Chosen: core.AgentID(g.str()), Outcome: g.str(), WaitMillis: g.int64(), DecisionMicros: g.int64(),
	}
	if g.r.IntN(3) == 0 {
		d.Strategy = []string{"most-skilled", "round-robin", "least-occupied"}[g.r.IntN(3)]
	}
	if n := g.r.IntN(5); n > 0 {
		d.Queues = make([]core.QueueID, n-1)
		for i := range d.Queues {
			d.Queues[i] = core.QueueID(g.str())
		}
	}
	if n := g.r.IntN(6); n > 0 {
		d.Candidates = make([]Candidate, n-1)
		for i := range d.Candidates {
			d.Candidates[i] = Candidate{Agent: core.AgentID(g.str()), Score: g.float(), Why: g.str(), Result: g.str()}
		}
	}
	return d
}

func TestAppendJSONRandom(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(20240506, 1))}
	n := 5000
	if testing.Short() {
		n = 500
	}
	for range n {
		checkBoth(t, g.interaction())
		checkBoth(t, g.agentState())
		checkBoth(t, g.lease())
		checkBoth(t, g.decision())
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("call-1", "voice", "<&>\u2028", int64(3), uint64(7), math.Float64bits(1.5), int64(1.7e9), int64(5), int32(0))
	f.Add("", "", "", int64(0), uint64(0), uint64(0), int64(0), int64(0), int32(0))
	f.Add("\xff\x00\"\\", "\b\f\n\r\t\x1f", "日本\u2029", int64(-1), uint64(math.MaxUint64),
		math.Float64bits(1e-7), int64(-62135596800), int64(-1), int32(-8*3600))
	f.Add("a", "b", "c", int64(math.MinInt64), uint64(1), math.Float64bits(math.NaN()), int64(253402300800), int64(0), int32(86400))
	f.Add("x", "y", "z", int64(1), uint64(2), math.Float64bits(1e21), int64(math.MaxInt64), int64(999999999), int32(30))
	f.Fuzz(func(t *testing.T, s1, s2, s3 string, i int64, u uint64, fbits uint64, sec, nsec int64, off int32) {
		loc := time.UTC
		if off != 0 {
			loc = time.FixedZone(s3, int(off))
		}
		tm := time.Unix(sec, nsec).In(loc)
		var attrs map[string]string
		switch u % 3 {
		case 1:
			attrs = map[string]string{}
		case 2:
			attrs = map[string]string{s1: s2, s2: s3, s3: s1}
		}
		checkBoth(t, Interaction{
			ID: core.InteractionID(s1), Channel: core.Channel(s2), Queue: core.QueueID(s3), Priority: int(i),
			State: s1, Previous: s2, Agent: core.AgentID(s3), Reason: s1,
			CreatedAt: tm, EnqueuedAt: tm, AnsweredAt: time.Time{}, EndedAt: tm.Add(time.Duration(i)),
			Attributes: attrs, IdempotencyKey: s2,
		})
		checkBoth(t, AgentState{State: s1, Presence: s2, Reason: s3, Cause: s1, Version: u, Epoch: uint64(i), Fence: fbits,
			Load:      []ChannelLoad{{Channel: core.Channel(s2), Capacity: int(i), Offered: int(u), Busy: int(sec), WrapUp: int(nsec)}},
			IdleSince: tm})
		checkBoth(t, Lease{Lease: core.LeaseID(u), Epoch: fbits, Channel: core.Channel(s1), Outcome: s2, TTLMillis: i,
			Request: core.RequestID(s3)})
		score := math.Float64frombits(fbits)
		for _, strategy := range []string{s1, "most-skilled", "round-robin", "least-occupied"} {
			checkBoth(t, Decision{Direction: s1, Strategy: strategy, Step: int(i), Queues: []core.QueueID{core.QueueID(s2)},
				Eligible: int(off), Candidates: []Candidate{{Agent: core.AgentID(s3), Score: score, Result: s1},
					{Agent: core.AgentID(s1), Score: float64(i), Why: s2}},
				Chosen: core.AgentID(s2), Outcome: s3, WaitMillis: sec, DecisionMicros: nsec})
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	created := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	payloads := []struct {
		name string
		v    any
	}{
		{"Interaction", Interaction{
			ID: "01HXYZ7K3M2N4P5Q6R7S8T9V0W", Channel: core.ChannelVoice, Queue: "support", Priority: 5,
			State: "connected", Previous: "offered", Agent: "agent-042",
			CreatedAt: created, EnqueuedAt: created.Add(1500 * time.Millisecond), AnsweredAt: created.Add(42 * time.Second),
			Attributes: map[string]string{"call_id": "a84b4c76e66710@pc33.example.com", "from": "sip:+15551234567@example.com",
				"to": "sip:support@ccmesh.example.com"},
		}},
		{"AgentState", AgentState{
			State: "busy", Presence: "ready", Cause: "accept", Version: 1234, Epoch: 7,
			Load:      []ChannelLoad{{Channel: core.ChannelVoice, Capacity: 1, Busy: 1}},
			IdleSince: created,
		}},
	}
	for _, p := range payloads {
		b.Run(p.name+"/json.Marshal", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(p.v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(p.name+"/AppendJSON", func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = AppendJSON(buf[:0], p.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAppendJSONNoAllocs checks that the fast path, given room in dst, does
// not allocate: no fallback to json.Marshal, no escaping scratch space.
func TestAppendJSONNoAllocs(t *testing.T) {
	if !jsonCompatible {
		t.Fatal("encoding/json escapes strings in an unknown way; the fast path is off")
	}
	tm := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	for _, v := range []any{
		Interaction{ID: "i1", Channel: core.ChannelVoice, CreatedAt: tm, EnqueuedAt: tm,
			Attributes: map[string]string{"call_id": "c<1>", "from": "a", "to": "b"}},
		&AgentState{State: "ready", Load: []ChannelLoad{{Channel: core.ChannelChat, Capacity: 3}}, IdleSince: tm},
		Lease{Lease: 9, Channel: core.ChannelVoice, Outcome: "granted", TTLMillis: 5000},
		&Decision{Strategy: "most-skilled", Queues: []core.QueueID{"q"}, Candidates: []Candidate{{Agent: "a", Score: 2, Why: "w"}}},
	} {
		buf := make([]byte, 0, 4096)
		if n := testing.AllocsPerRun(100, func() { buf, _ = AppendJSON(buf[:0], v) }); n != 0 {
			t.Errorf("%T: %v allocs per call, want 0", v, n)
		}
	}
}
