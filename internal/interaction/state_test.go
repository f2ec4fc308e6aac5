package interaction

import "testing"

func TestLifecycleTransitions(t *testing.T) {
	all := []State{StateCreated, StateQueued, StateOffered, StateConnected, StateWrapUp, StateEnded, StateAbandoned, StateFailed, StateTimedOut}
	allowed := map[[2]State]bool{
		{StateCreated, StateQueued}: true, {StateCreated, StateOffered}: true, {StateCreated, StateFailed}: true, {StateCreated, StateAbandoned}: true,
		{StateQueued, StateOffered}: true, {StateQueued, StateAbandoned}: true, {StateQueued, StateTimedOut}: true, {StateQueued, StateFailed}: true,
		{StateOffered, StateConnected}: true, {StateOffered, StateQueued}: true, {StateOffered, StateAbandoned}: true, {StateOffered, StateFailed}: true,
		{StateConnected, StateWrapUp}: true, {StateConnected, StateEnded}: true, {StateConnected, StateFailed}: true,
		{StateConnected, StateQueued}: true, {StateConnected, StateOffered}: true,
		{StateWrapUp, StateEnded}: true,
	}
	for _, from := range all {
		for _, to := range all {
			if got, want := CanMove(from, to), allowed[[2]State{from, to}]; got != want {
				t.Errorf("CanMove(%s, %s) = %v, want %v", from, to, got, want)
			}
		}
	}
	for _, s := range all {
		want := s == StateEnded || s == StateAbandoned || s == StateFailed || s == StateTimedOut
		if s.Terminal() != want {
			t.Errorf("%s.Terminal() = %v", s, s.Terminal())
		}
		if want && len(transitions[s]) != 0 {
			t.Errorf("terminal %s has transitions", s)
		}
	}
}
