package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/events"
)

// maxStreams bounds concurrent event streams (backpressure: 503 past it).
const maxStreams = 1000

// heartbeat keeps idle streams open through proxies.
const heartbeat = 15 * time.Second

// stream serves the event log as Server-Sent Events. Each event's SSE id is its
// sequence number; a client resumes with ?after=N or the Last-Event-ID header
// (from memory, or from the store when the events have left memory). Without
// either, the stream starts with the next event. ?types=a,b filters by type.
// Agents see only events about themselves. Only durable events are sent, so an id
// a client has seen always names the same event, even after a crash.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	after := s.p.Log.DurableSeq()
	for _, src := range []struct{ name, v string }{{"Last-Event-ID", r.Header.Get("Last-Event-ID")}, {"after", r.URL.Query().Get("after")}} {
		if src.v == "" {
			continue
		}
		n, err := strconv.ParseUint(src.v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s: %q is not a sequence number", src.name, src.v))
			return
		}
		if last := s.p.Log.LastSeq(); n > last {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s: %d is beyond the newest event (%d)", src.name, n, last))
			return
		}
		after = n
	}
	types := map[events.Type]bool{}
	if v := r.URL.Query().Get("types"); v != "" {
		for _, t := range strings.Split(v, ",") {
			types[events.Type(strings.TrimSpace(t))] = true
		}
	}
	if s.streams.Add(1) > maxStreams {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusServiceUnavailable, "busy", "too many event streams")
		return
	}
	defer s.streams.Add(-1)
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprintf(w, ": ccmesh event stream from seq %d\n\n", after+1)
	flusher.Flush()

	self := who(r).agent
	keep := func(ev *events.Event) bool {
		if len(types) > 0 && !types[ev.Type] {
			return false
		}
		return self == "" || ev.Agent == self
	}
	hb := time.NewTicker(heartbeat)
	defer hb.Stop()
	buf := make([]events.Event, 0, 256)
	for {
		evs, more, err := s.p.Log.ReadDurable(after, 256, buf)
		if errors.Is(err, events.ErrGap) {
			// Older than memory: page from the store (everything before the window is durable).
			evs, err = s.p.Store.Events(r.Context(), after, 1000)
			more = nil
			if err == nil && len(evs) == 0 {
				err = fmt.Errorf("events after %d are neither in memory nor in the store", after)
			}
		}
		if err != nil {
			if !errors.Is(err, events.ErrClosed) && r.Context().Err() == nil {
				s.p.Logger.Warn("event stream", "err", err)
			}
			return
		}
		for i := range evs {
			ev := &evs[i]
			after = ev.Seq
			if !keep(ev) {
				continue
			}
			data, err := json.Marshal(ev)
			if err != nil {
				s.p.Logger.Error("event stream: marshal", "seq", ev.Seq, "err", err)
				continue
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Type, data); err != nil {
				return
			}
		}
		if len(evs) > 0 {
			flusher.Flush()
			continue
		}
		if more == nil {
			continue
		}
		select {
		case <-r.Context().Done(): // client went away or server shuts down
			return
		case <-more: // new events
		case <-hb.C: // keep-alive comment
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}
