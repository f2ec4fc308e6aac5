package config

import (
	"errors"
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestHoursIsOpen(t *testing.T) {
	paris := &BusinessHours{
		TimeZone: "Europe/Paris",
		Open: []OpenWindow{
			{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "09:00", To: "12:30"},
			{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "13:30", To: "18:00"},
			{Days: []string{"sat"}, From: "22:00", To: "24:00"},
		},
		ClosedDates: []string{"2026-12-25"},
	}
	utc := &BusinessHours{Open: []OpenWindow{{Days: []string{"fri"}, From: "00:00", To: "23:59"}}}
	ny := &BusinessHours{TimeZone: "America/New_York", Open: []OpenWindow{{Days: []string{"mon"}, From: "09:00", To: "17:00"}}}
	p := mustLoc(t, "Europe/Paris")
	n := mustLoc(t, "America/New_York")
	tests := []struct {
		name string
		b    *BusinessHours
		at   time.Time
		want bool
	}{
		// 2026-06-15 is a Monday; Paris is UTC+2 in summer, UTC+1 in winter.
		{"monday morning", paris, time.Date(2026, 6, 15, 10, 0, 0, 0, p), true},
		{"from is inclusive", paris, time.Date(2026, 6, 15, 9, 0, 0, 0, p), true},
		{"just before opening", paris, time.Date(2026, 6, 15, 8, 59, 59, 0, p), false},
		{"to is exclusive", paris, time.Date(2026, 6, 15, 12, 30, 0, 0, p), false},
		{"last second before to", paris, time.Date(2026, 6, 15, 12, 29, 59, 0, p), true},
		{"lunch break", paris, time.Date(2026, 6, 15, 13, 0, 0, 0, p), false},
		{"afternoon", paris, time.Date(2026, 6, 15, 17, 59, 0, 0, p), true},
		{"sunday", paris, time.Date(2026, 6, 14, 10, 0, 0, 0, p), false},
		{"saturday until midnight", paris, time.Date(2026, 6, 20, 23, 59, 59, 0, p), true},
		{"sunday midnight closes", paris, time.Date(2026, 6, 21, 0, 0, 0, 0, p), false},
		{"utc instant in summer zone", paris, time.Date(2026, 6, 15, 7, 30, 0, 0, time.UTC), true},      // 09:30 Paris
		{"utc instant before open summer", paris, time.Date(2026, 6, 15, 6, 30, 0, 0, time.UTC), false}, // 08:30 Paris
		{"utc instant in winter zone", paris, time.Date(2026, 1, 12, 8, 0, 0, 0, time.UTC), true},       // 09:00 Paris, Monday
		{"utc instant before open winter", paris, time.Date(2026, 1, 12, 7, 59, 0, 0, time.UTC), false},
		{"closed date", paris, time.Date(2026, 12, 25, 10, 0, 0, 0, p), false},
		{"day after closed date", paris, time.Date(2026, 12, 28, 10, 0, 0, 0, p), true},
		// 2026-12-24 23:30 UTC is already the 25th in Paris (00:30), a Friday: closed all day.
		{"closed date uses zone's date", paris, time.Date(2026, 12, 24, 23, 30, 0, 0, time.UTC), false},
		{"default zone is utc", utc, time.Date(2026, 6, 19, 23, 58, 0, 0, time.UTC), true},
		// Friday 23:30 UTC is Saturday 01:30 in Paris, but the hours are in UTC.
		{"utc zone ignores time's location", utc, time.Date(2026, 6, 20, 1, 30, 0, 0, p), true},
		{"weekday boundary thursday", utc, time.Date(2026, 6, 18, 23, 59, 0, 0, time.UTC), false},
		{"weekday boundary saturday", utc, time.Date(2026, 6, 20, 0, 0, 0, 0, time.UTC), false},
		// Monday 09:30 in New York is Monday 13:30 UTC; Tuesday 02:00 UTC is Monday 22:00 NY.
		{"new york open", ny, time.Date(2026, 6, 15, 13, 30, 0, 0, time.UTC), true},
		{"new york closed evening", ny, time.Date(2026, 6, 16, 2, 0, 0, 0, time.UTC), false},
		{"new york local", ny, time.Date(2026, 6, 15, 16, 59, 0, 0, n), true},
		{"nil hours always open", nil, time.Date(2026, 6, 14, 3, 0, 0, 0, time.UTC), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			if b != nil {
				cp := *b
				ApplyDefaults(&Config{Queues: []Queue{{BusinessHours: &cp}}})
				b = &cp
			}
			h, err := CompileHours(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.IsOpen(tt.at); got != tt.want {
				t.Errorf("IsOpen(%s) = %v, want %v", tt.at, got, tt.want)
			}
		})
	}
}

func TestCompileHoursInvalid(t *testing.T) {
	_, err := CompileHours(&BusinessHours{TimeZone: "Nowhere/Atlantis", Open: []OpenWindow{{Days: []string{"mon"}, From: "10:00", To: "09:00"}}})
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 2 {
		t.Fatalf("CompileHours = %v, want 2 problems", err)
	}
	h, err := CompileHours(nil)
	if h != nil || err != nil {
		t.Fatalf("CompileHours(nil) = %v, %v", h, err)
	}
}

func TestHoursNextChange(t *testing.T) {
	p := mustLoc(t, "Europe/Paris")
	h, err := CompileHours(&BusinessHours{
		TimeZone:    "Europe/Paris",
		Open:        []OpenWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "09:00", To: "17:00"}},
		ClosedDates: []string{"2026-06-16"},
	})
	if err != nil {
		t.Fatal(err)
	}
	always, err := CompileHours(&BusinessHours{TimeZone: "UTC", Open: []OpenWindow{{
		Days: []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}, From: "00:00", To: "24:00"}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		h    *Hours
		at   time.Time
		want time.Time
	}{
		{"open to close", h, time.Date(2026, 6, 15, 10, 0, 0, 0, p), time.Date(2026, 6, 15, 17, 0, 0, 0, p)},
		{"skips closed date", h, time.Date(2026, 6, 15, 18, 0, 0, 0, p), time.Date(2026, 6, 17, 9, 0, 0, 0, p)},
		{"over the weekend", h, time.Date(2026, 6, 19, 17, 0, 0, 0, p), time.Date(2026, 6, 22, 9, 0, 0, 0, p)},
		{"strictly after", h, time.Date(2026, 6, 17, 9, 0, 0, 0, p), time.Date(2026, 6, 17, 17, 0, 0, 0, p)},
		{"never changes", always, time.Date(2026, 6, 15, 10, 0, 0, 0, time.UTC), time.Time{}},
		{"nil", nil, time.Date(2026, 6, 15, 10, 0, 0, 0, time.UTC), time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.NextChange(tt.at); !got.Equal(tt.want) {
				t.Errorf("NextChange(%s) = %s, want %s", tt.at, got, tt.want)
			}
		})
	}
}
