package config

import (
	"errors"
	"fmt"
	"slices"
	"time"

	// Embed the IANA time-zone database so business hours work on hosts
	// (minimal containers) without /usr/share/zoneinfo.
	_ "time/tzdata"
)

// Hours is a compiled BusinessHours, ready to answer "is the queue open now?".
// A nil *Hours means always open. Hours is immutable and safe for concurrent use.
type Hours struct {
	loc *time.Location
	// windows[weekday] holds [from, to) minute-of-day intervals.
	windows [7][][2]int
	// closed holds YYYY-MM-DD dates, in loc, when the queue is closed all day.
	closed map[string]bool
}

// CompileHours compiles b. A nil b gives a nil *Hours (always open). Errors
// come from an invalid b; a validated configuration always compiles.
func CompileHours(b *BusinessHours) (*Hours, error) {
	if b == nil {
		return nil, nil
	}
	var p problems
	validateHours(&p, "business_hours", b)
	if len(p.list) > 0 {
		return nil, &ValidationError{Problems: p.list}
	}
	tz := b.TimeZone
	if tz == "" {
		tz = DefaultTimeZone
	}
	loc, err := time.LoadLocation(tz)
	if err != nil { // unreachable after validateHours; kept for safety
		return nil, fmt.Errorf("business_hours.timezone: %w", err)
	}
	h := &Hours{loc: loc, closed: make(map[string]bool, len(b.ClosedDates))}
	for _, w := range b.Open {
		from, _ := parseHHMM(w.From, false)
		to, _ := parseHHMM(w.To, true)
		for _, d := range w.Days {
			wd := weekdays[d]
			h.windows[wd] = append(h.windows[wd], [2]int{from, to})
		}
	}
	for _, d := range b.ClosedDates {
		t, err := time.Parse(time.DateOnly, d)
		if err != nil {
			return nil, errors.New("business_hours: unreachable: bad date")
		}
		h.closed[t.Format(time.DateOnly)] = true
	}
	return h, nil
}

// Location returns the time zone the hours are evaluated in (UTC for nil h).
func (h *Hours) Location() *time.Location {
	if h == nil {
		return time.UTC
	}
	return h.loc
}

// IsOpen reports whether t falls in an open window, in the hours' time zone, on
// a date that is not closed. A window's From is inclusive and its To exclusive.
func (h *Hours) IsOpen(t time.Time) bool {
	if h == nil {
		return true
	}
	lt := t.In(h.loc)
	if h.closed[lt.Format(time.DateOnly)] {
		return false
	}
	m := lt.Hour()*60 + lt.Minute()
	for _, w := range h.windows[lt.Weekday()] {
		if m >= w[0] && m < w[1] {
			return true
		}
	}
	return false
}

// maxScanDays bounds NextChange's search: a year, plus a week for the weekly cycle.
const maxScanDays = 366 + 7

// NextChange returns the first instant after t at which IsOpen changes value,
// or the zero time if it never changes within a year (always open, never open,
// or a nil h).
func (h *Hours) NextChange(t time.Time) time.Time {
	if h == nil {
		return time.Time{}
	}
	cur := h.IsOpen(t)
	lt := t.In(h.loc)
	y, mo, d := lt.Date()
	for day := 0; day <= maxScanDays; day++ {
		// Candidate boundaries of that local day: midnight and every window edge.
		date := time.Date(y, mo, d+day, 0, 0, 0, 0, h.loc)
		mins := []int{0}
		for _, w := range h.windows[date.Weekday()] {
			mins = append(mins, w[0], w[1])
		}
		slices.Sort(mins)
		for _, m := range slices.Compact(mins) {
			b := time.Date(date.Year(), date.Month(), date.Day(), m/60, m%60, 0, 0, h.loc)
			if b.After(t) && h.IsOpen(b) != cur {
				return b
			}
		}
	}
	return time.Time{}
}
