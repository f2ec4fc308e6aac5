package events

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the JSON encoding of an event payload to dst. For the
// payload types written on every call (Interaction, AgentState, Lease,
// Decision, as values or non-nil pointers) it encodes without reflection;
// the output is byte-for-byte what encoding/json's Marshal produces. Any
// other value goes through json.Marshal.
//
// A value the fast path cannot encode exactly as encoding/json would (a time
// that time.Time.MarshalJSON rejects, a NaN or infinite score) is handed to
// json.Marshal as a whole, so such values yield json.Marshal's own output or
// error. On error dst is returned unchanged, with the error json.Marshal
// returned, unwrapped.
func AppendJSON(dst []byte, data any) ([]byte, error) {
	if out, ok := appendFast(dst, data); ok {
		return out, nil
	}
	// appendFast may have written past len(dst) (in dst's spare capacity or a
	// new array); dst[:len(dst)] itself is untouched.
	b, err := json.Marshal(data)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// appendFast encodes the hot payload types. It reports false, with out
// garbage, for any other value and for values it cannot encode exactly as
// encoding/json does.
func appendFast(dst []byte, data any) (out []byte, ok bool) {
	if !jsonCompatible {
		return nil, false
	}
	switch v := data.(type) {
	case Interaction:
		return appendInteraction(dst, &v)
	case *Interaction:
		if v != nil {
			return appendInteraction(dst, v)
		}
	case AgentState:
		return appendAgentState(dst, &v)
	case *AgentState:
		if v != nil {
			return appendAgentState(dst, v)
		}
	case Lease:
		return appendLease(dst, &v), true
	case *Lease:
		if v != nil {
			return appendLease(dst, v), true
		}
	case Decision:
		return appendDecision(dst, &v)
	case *Decision:
		if v != nil {
			return appendDecision(dst, v)
		}
	}
	return nil, false
}

// The string escaping of encoding/json depends on its implementation: with
// GOEXPERIMENT=jsonv2 (Go 1.25, 1.26) it writes an invalid UTF-8 byte as a
// literal U+FFFD instead of \ufffd. jsonInvalidUTF8 is what this build's
// encoding/json writes, found by asking it once; jsonCompatible is false, and
// AppendJSON always uses json.Marshal, if its escaping is neither known form.
var jsonInvalidUTF8, jsonCompatible = probeJSONEscaping()

// probeJSONEscaping marshals a string holding every kind of escape and returns
// how invalid UTF-8 came out, or false if anything differs from appendString.
func probeJSONEscaping() (invalidUTF8 string, ok bool) {
	b, err := json.Marshal("\xff\\\"<>&\u2028\u2029\b\f\n\r\t\x01\x7f\u00e9")
	if err != nil {
		return "", false
	}
	const rest = `\\\"\u003c\u003e\u0026\u2028\u2029\b\f\n\r\t\u0001` + "\x7f\u00e9\""
	for _, r := range []string{`\ufffd`, "\ufffd"} {
		if string(b) == `"`+r+rest {
			return r, true
		}
	}
	return "", false
}

// appendInteraction encodes i as encoding/json encodes an Interaction. It
// reports false when a time cannot be encoded; b is then garbage.
func appendInteraction(b []byte, i *Interaction) ([]byte, bool) {
	ok := true
	b = append(b, `{"id":`...)
	b = appendString(b, string(i.ID))
	b = append(b, `,"channel":`...)
	b = appendString(b, string(i.Channel))
	b = append(b, `,"queue":`...)
	b = appendString(b, string(i.Queue))
	b = append(b, `,"priority":`...)
	b = strconv.AppendInt(b, int64(i.Priority), 10)
	b = append(b, `,"state":`...)
	b = appendString(b, i.State)
	if i.Previous != "" {
		b = append(b, `,"previous":`...)
		b = appendString(b, i.Previous)
	}
	if i.Agent != "" {
		b = append(b, `,"agent":`...)
		b = appendString(b, string(i.Agent))
	}
	if i.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, i.Reason)
	}
	b = append(b, `,"created_at":`...)
	b, ok = appendTime(b, i.CreatedAt, ok)
	if !i.EnqueuedAt.IsZero() {
		b = append(b, `,"enqueued_at":`...)
		b, ok = appendTime(b, i.EnqueuedAt, ok)
	}
	if !i.AnsweredAt.IsZero() {
		b = append(b, `,"answered_at":`...)
		b, ok = appendTime(b, i.AnsweredAt, ok)
	}
	if !i.EndedAt.IsZero() {
		b = append(b, `,"ended_at":`...)
		b, ok = appendTime(b, i.EndedAt, ok)
	}
	if len(i.Attributes) > 0 {
		b = append(b, `,"attributes":`...)
		b = appendStringMap(b, i.Attributes)
	}
	if i.IdempotencyKey != "" {
		b = append(b, `,"idempotency_key":`...)
		b = appendString(b, i.IdempotencyKey)
	}
	return append(b, '}'), ok
}

// appendAgentState encodes s as encoding/json encodes an AgentState. It
// reports false when IdleSince cannot be encoded; b is then garbage.
func appendAgentState(b []byte, s *AgentState) ([]byte, bool) {
	b = append(b, `{"state":`...)
	b = appendString(b, s.State)
	b = append(b, `,"presence":`...)
	b = appendString(b, s.Presence)
	if s.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, s.Reason)
	}
	b = append(b, `,"cause":`...)
	b = appendString(b, s.Cause)
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, s.Version, 10)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, s.Epoch, 10)
	if s.Fence != 0 {
		b = append(b, `,"fence":`...)
		b = strconv.AppendUint(b, s.Fence, 10)
	}
	b = append(b, `,"load":`...)
	if s.Load == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for k := range s.Load {
			if k > 0 {
				b = append(b, ',')
			}
			b = appendChannelLoad(b, &s.Load[k])
		}
		b = append(b, ']')
	}
	b = append(b, `,"idle_since":`...)
	b, ok := appendTime(b, s.IdleSince, true)
	return append(b, '}'), ok
}

// appendChannelLoad encodes l as encoding/json encodes a ChannelLoad.
func appendChannelLoad(b []byte, l *ChannelLoad) []byte {
	b = append(b, `{"channel":`...)
	b = appendString(b, string(l.Channel))
	b = append(b, `,"capacity":`...)
	b = strconv.AppendInt(b, int64(l.Capacity), 10)
	b = append(b, `,"offered":`...)
	b = strconv.AppendInt(b, int64(l.Offered), 10)
	b = append(b, `,"busy":`...)
	b = strconv.AppendInt(b, int64(l.Busy), 10)
	b = append(b, `,"wrap_up":`...)
	b = strconv.AppendInt(b, int64(l.WrapUp), 10)
	return append(b, '}')
}

// appendLease encodes l as encoding/json encodes a Lease.
func appendLease(b []byte, l *Lease) []byte {
	b = append(b, `{"lease":`...)
	b = strconv.AppendUint(b, uint64(l.Lease), 10)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, l.Epoch, 10)
	b = append(b, `,"channel":`...)
	b = appendString(b, string(l.Channel))
	b = append(b, `,"outcome":`...)
	b = appendString(b, l.Outcome)
	if l.TTLMillis != 0 {
		b = append(b, `,"ttl_ms":`...)
		b = strconv.AppendInt(b, l.TTLMillis, 10)
	}
	if l.Request != "" {
		b = append(b, `,"request":`...)
		b = appendString(b, string(l.Request))
	}
	return append(b, '}')
}

// appendDecision encodes d as json.Marshal encodes a Decision, that is as
// Decision.MarshalJSON does: a candidate with an empty Why gets explain's text.
// It reports false when a score is NaN or infinite; b is then garbage.
func appendDecision(b []byte, d *Decision) ([]byte, bool) {
	b = append(b, `{"direction":`...)
	b = appendString(b, d.Direction)
	b = append(b, `,"strategy":`...)
	b = appendString(b, d.Strategy)
	b = append(b, `,"step":`...)
	b = strconv.AppendInt(b, int64(d.Step), 10)
	b = append(b, `,"queues":`...)
	if d.Queues == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for k, q := range d.Queues {
			if k > 0 {
				b = append(b, ',')
			}
			b = appendString(b, string(q))
		}
		b = append(b, ']')
	}
	b = append(b, `,"eligible":`...)
	b = strconv.AppendInt(b, int64(d.Eligible), 10)
	b = append(b, `,"candidates":`...)
	if d.Candidates == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for k := range d.Candidates {
			c := &d.Candidates[k]
			if k > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"agent":`...)
			b = appendString(b, string(c.Agent))
			b = append(b, `,"score":`...)
			var ok bool
			if b, ok = appendFloat(b, c.Score); !ok {
				return b, false
			}
			b = append(b, `,"why":`...)
			why := c.Why
			if why == "" {
				// Same text as Decision.MarshalJSON; explain is called rather
				// than copied so the two cannot drift apart.
				why = explain(d.Strategy, c.Score)
			}
			b = appendString(b, why)
			b = append(b, `,"result":`...)
			b = appendString(b, c.Result)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if d.Chosen != "" {
		b = append(b, `,"chosen":`...)
		b = appendString(b, string(d.Chosen))
	}
	b = append(b, `,"outcome":`...)
	b = appendString(b, d.Outcome)
	b = append(b, `,"wait_ms":`...)
	b = strconv.AppendInt(b, d.WaitMillis, 10)
	b = append(b, `,"decision_us":`...)
	b = strconv.AppendInt(b, d.DecisionMicros, 10)
	return append(b, '}'), true
}

// appendTime appends t as time.Time.MarshalJSON would. ok is passed through
// and cleared when MarshalJSON would fail: the year is not four digits wide or
// the zone offset's hour is outside [0,23] (the same checks, on the same bytes,
// as time's appendStrictRFC3339).
func appendTime(b []byte, t time.Time, ok bool) ([]byte, bool) {
	b = append(b, '"')
	n0 := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[n0:]
	switch {
	case s[len("9999")] != '-':
		ok = false
	case s[len(s)-1] != 'Z':
		c := s[len(s)-len("Z07:00")]
		h := s[len(s)-len("07:00"):]
		if ('0' <= c && c <= '9') || 10*(h[0]-'0')+(h[1]-'0') >= 24 {
			ok = false
		}
	}
	return append(b, '"'), ok
}

// appendFloat appends f as encoding/json's float64 encoder does: like
// strconv 'f', switching to 'e' below 1e-6 and from 1e21, with a one-digit
// negative exponent unpadded. It reports false for NaN and ±Inf, which
// encoding/json rejects.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, false
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9.
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}

// appendStringMap appends m as encoding/json encodes a non-nil
// map[string]string: keys sorted bytewise, keys and values escaped.
func appendStringMap(b []byte, m map[string]string) []byte {
	var arr [16]string
	keys := arr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for k, key := range keys {
		if k > 0 {
			b = append(b, ',')
		}
		b = appendString(b, key)
		b = append(b, ':')
		b = appendString(b, m[key])
	}
	return append(b, '}')
}

// jsonHex is the digit set of encoding/json's \u00XX escapes (lower case).
const jsonHex = "0123456789abcdef"

// htmlSafe reports the ASCII bytes encoding/json copies verbatim into a string
// with HTML escaping on (its default): printable ASCII and DEL, except '"',
// '\\', '<', '>' and '&'.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		switch c {
		case '"', '\\', '<', '>', '&':
		default:
			t[c] = true
		}
	}
	return t
}()

// appendString appends s as a JSON string exactly as encoding/json does with
// HTML escaping: \" \\ \b \f \n \r \t, other bytes < 0x20 and < > & as \u00XX,
// U+2028 and U+2029 as \u2028 and \u2029, and each invalid UTF-8 byte as
// \ufffd (or as encoding/json writes it: jsonInvalidUTF8).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if htmlSafe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, jsonInvalidUTF8...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', jsonHex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
