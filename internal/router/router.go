// Package router matches waiting interactions with agents. It is channel-agnostic:
// it knows queues, skills, priorities, strategies and overflow steps, and a view of
// agent availability fed by the agents' owners' events. It never talks SIP or XMPP.
//
// Both directions of matching are handled:
//   - an interaction arrives (Enqueue): if nothing waits ahead of it, the best
//     available agent is chosen by the queue's strategy and reserved at its owner;
//   - an agent frees up (an agent event with free capacity): the best waiting
//     interaction (highest priority, then longest wait) among every queue the agent
//     is eligible for, at the interaction's current overflow step, gets the agent.
//
// A denied reservation moves on to the next candidate. Every decision, with its
// candidates and scores, is appended to the event log.
package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// Errors returned by Enqueue.
var (
	// ErrUnknownQueue: no such queue.
	ErrUnknownQueue = errors.New("unknown queue")
	// ErrFull: the node's waiting limit is reached (backpressure: answer busy).
	ErrFull = errors.New("too many interactions waiting")
	// ErrAlreadyQueued: the interaction is already waiting.
	ErrAlreadyQueued = errors.New("interaction already queued")
)

// Reserver reserves agents at their owner. Reserve may block (a remote owner) and
// must be safe for concurrent use. A refusal is an *agent.DenyError.
type Reserver interface {
	Reserve(agent.ReserveRequest) (agent.Grant, error)
}

// Offerer receives each granted reservation. Offer is called with the router's lock
// held: it must not block and must not call back into the Router.
type Offerer interface {
	Offer(o Offer) OfferResult
}

// OfferResult is what became of an offer handed to the Offerer.
type OfferResult int

// Offer results.
const (
	// OfferTaken: the interaction is now offered to the agent.
	OfferTaken OfferResult = iota
	// OfferGone: the interaction ended meanwhile; the Offerer released the lease.
	OfferGone
	// OfferDead: the lease ended (expired) before the offer could be recorded; the
	// interaction still waits and the router tries another agent.
	OfferDead
)

// Offer is a granted reservation handed to the interaction's holder.
type Offer struct {
	Interaction core.InteractionID
	Queue       core.QueueID
	Grant       agent.Grant
	// Wait is how long the interaction waited before this offer.
	Wait time.Duration
}

// Waiting describes an interaction to queue.
type Waiting struct {
	ID       core.InteractionID
	Channel  core.Channel
	Queue    core.QueueID
	Priority int
	// EnqueuedAt is when the interaction first entered the queue; re-queueing after
	// a missed offer keeps it, so the interaction keeps its place.
	EnqueuedAt time.Time
}

// Snapshotter returns the current state of every agent; the router resyncs its view
// from it after falling behind the owners' events. Safe for concurrent use.
type Snapshotter interface {
	Snapshots() []agent.View
}

// TimeoutFunc is called (without the router lock) for interactions whose queue's max
// wait passed; they have left the queue.
type TimeoutFunc func(w Waiting)

// Params are the Router's dependencies.
type Params struct {
	Queues []config.Queue
	// Agents are every agent the router may route to (in a cluster: all of them).
	Agents   []config.Agent
	Reserver Reserver
	Offerer  Offerer
	// Owner resyncs the view after a feed gap (optional).
	Owner Snapshotter
	// Fairness, in a cluster, defers a freed agent to another node's better
	// waiting interaction (optional).
	Fairness Fairness
	// OnTimeout is told of interactions that exceeded their queue's max wait.
	OnTimeout TimeoutFunc
	Log       *events.Log
	Clock     clock.Clock
	Logger    *slog.Logger
	// MaxWaiting bounds waiting interactions across queues.
	MaxWaiting int
	// Candidates is how many ranked candidates a decision records and tries.
	Candidates int
	// TickInterval is how often overflow steps and max wait are checked (default 250ms).
	TickInterval time.Duration
}

type agentView struct {
	// Hot fields first: rank reads them for every eligible agent.
	ready bool
	used  [core.NumChannels]int32
	cap   [core.NumChannels]int32
	// idleSince (Unix ns) orders longest-idle.
	idleSince int64
	index     int // position in the sorted agent list, for round-robin
	id        core.AgentID
	// fence, epoch and version order the owner's states: a new directory fence
	// (ownership moved) or owner epoch (the owner restarted) wins whatever its version.
	fence   uint64
	epoch   uint64
	version uint64
	// unreachable: the agent's owner is down (issue 5); not offered work
	// whatever her last known state.
	unreachable bool
	// stated is set once an owner's state was applied: cap then holds the owner's
	// capacities, which Reconfigure keeps over the configured ones.
	stated bool
	skills map[core.SkillName]int
	// queues lists the queues this agent can serve and from which step.
	queues []queueStep
}

type queueStep struct {
	q       *queue
	minStep int
}

type step struct {
	after    time.Duration
	relax    int
	queues   []core.QueueID
	eligible []*agentView
	skillSum []int // skillSum[i] is eligible[i]'s level sum on the queue's skills
}

type queue struct {
	cfg   config.Queue
	steps []step // steps[0] is the base criteria
	// waiting is kept sorted: priority desc, enqueuedAt asc, seq asc.
	waiting []*waiter
	rrLast  int // round-robin: index of the last agent chosen, -1 at start
	stats   queueCounters
}

type queueCounters struct {
	offered, answered, answeredInSL, abandoned, abandonedAfterSL, timedOut uint64
}

type waiter struct {
	Waiting
	seq      uint64
	q        *queue
	lastStep int
}

// Router is safe for concurrent use. One mutex guards the queues and the agent view.
type Router struct {
	reserver   Reserver
	offerer    Offerer
	owner      Snapshotter
	fair       Fairness
	onTimeout  TimeoutFunc
	log        *events.Log
	clock      clock.Clock
	logger     *slog.Logger
	maxWaiting int
	candidates int
	tick       time.Duration

	// mu guards everything below.
	mu       sync.Mutex
	queues   map[core.QueueID]*queue
	order    []*queue // queues in config order
	agents   map[core.AgentID]*agentView
	byIndex  []*agentView
	waiters  map[core.InteractionID]*waiter
	scratch  []scored // rank's result buffer, reused under mu
	nextSeq  uint64
	feedSeq  uint64 // last event seq applied from the log
	draining bool
}

// New compiles the queues' eligibility and returns a Router with every agent unavailable.
func New(p Params) (*Router, error) {
	r := &Router{
		reserver: p.Reserver, offerer: p.Offerer, owner: p.Owner, fair: p.Fairness, onTimeout: p.OnTimeout, log: p.Log, clock: p.Clock, logger: p.Logger,
		maxWaiting: p.MaxWaiting, candidates: p.Candidates, tick: p.TickInterval,
		waiters: map[core.InteractionID]*waiter{},
	}
	if r.logger == nil {
		r.logger = slog.Default()
	}
	if r.maxWaiting <= 0 {
		r.maxWaiting = 100000
	}
	if r.candidates <= 0 {
		r.candidates = 10
	}
	if r.tick <= 0 {
		r.tick = 250 * time.Millisecond
	}
	t, err := buildTopology(p.Queues, p.Agents)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	r.queues, r.order, r.agents, r.byIndex = t.queues, t.order, t.agents, t.byIndex
	return r, nil
}

// topology is what a configuration compiles to: the queues with their overflow
// steps and eligible agents, and the agent views with the queues they serve. New
// builds the first one; Reconfigure builds another and swaps it in. Every pointer
// in it points into it.
type topology struct {
	queues  map[core.QueueID]*queue
	order   []*queue // queues in config order
	agents  map[core.AgentID]*agentView
	byIndex []*agentView // sorted by ID; views share one array
}

// buildTopology compiles queues and agents, every agent unavailable and every
// queue empty. It reads only its arguments: it needs no lock.
func buildTopology(queues []config.Queue, agents []config.Agent) (*topology, error) {
	t := &topology{queues: make(map[core.QueueID]*queue, len(queues)), agents: make(map[core.AgentID]*agentView, len(agents))}
	agents = append([]config.Agent(nil), agents...)
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	// Views live in one array: rank walks ~100 of them per decision, and contiguous
	// memory keeps that walk in cache.
	views := make([]agentView, len(agents))
	t.byIndex = make([]*agentView, 0, len(agents))
	for i, a := range agents {
		if i > 0 && agents[i-1].ID == a.ID {
			return nil, fmt.Errorf("agent %s: duplicate id", a.ID)
		}
		v := &views[i]
		*v = agentView{id: a.ID, index: i, skills: a.Skills}
		for _, ch := range core.Channels {
			v.cap[ch.Index()] = int32(a.CapacityFor(ch))
		}
		t.agents[a.ID] = v
		t.byIndex = append(t.byIndex, v)
	}
	for _, qc := range queues {
		if _, dup := t.queues[qc.ID]; dup {
			return nil, fmt.Errorf("queue %s: duplicate id", qc.ID)
		}
		q := &queue{cfg: qc, rrLast: -1}
		t.queues[qc.ID] = q
		t.order = append(t.order, q)
	}
	bySkill := map[core.SkillName][]*agentView{}
	for _, v := range t.byIndex {
		for s := range v.skills {
			bySkill[s] = append(bySkill[s], v)
		}
	}
	for _, q := range t.order {
		if err := t.compile(q, bySkill); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// eligibleBase reports whether the agent meets the queue's skills lowered by relax.
func eligibleBase(v *agentView, need map[core.SkillName]int, relax int) (bool, int) {
	sum := 0
	for s, min := range need {
		lvl, ok := v.skills[s]
		if !ok || lvl < min-relax {
			return false, 0
		}
		sum += lvl
	}
	return true, sum
}

// candidatesFor returns the agents that may meet need: those holding its rarest
// skill, or everyone when need is empty.
func (t *topology) candidatesFor(need map[core.SkillName]int, bySkill map[core.SkillName][]*agentView) []*agentView {
	var best []*agentView
	found := false
	for s := range need {
		if l := bySkill[s]; !found || len(l) < len(best) {
			best, found = l, true
		}
	}
	if !found {
		return t.byIndex
	}
	return best
}

// compile builds q's steps (base criteria, then one per overflow step) and records
// on each eligible agent the queue and the first step she is eligible at.
func (t *topology) compile(q *queue, bySkill map[core.SkillName][]*agentView) error {
	type crit struct {
		after  time.Duration
		relax  int
		queues []core.QueueID
	}
	crits := []crit{{}}
	relax := 0
	var added []core.QueueID
	for i, s := range q.cfg.Overflow {
		if s.Relax > relax {
			relax = s.Relax
		}
		for _, id := range s.AddQueues {
			if _, ok := t.queues[id]; !ok {
				return fmt.Errorf("queue %s overflow[%d]: %w: %s", q.cfg.ID, i, ErrUnknownQueue, id)
			}
			added = append(added, id)
		}
		crits = append(crits, crit{after: s.After.D(), relax: relax, queues: append([]core.QueueID(nil), added...)})
	}
	for si, c := range crits {
		st := step{after: c.after, relax: c.relax, queues: append([]core.QueueID{q.cfg.ID}, c.queues...)}
		pool := t.byIndex
		if len(c.queues) == 0 && c.relax == 0 {
			pool = t.candidatesFor(q.cfg.Skills, bySkill)
		}
		for _, v := range pool {
			ok, sum := eligibleBase(v, q.cfg.Skills, c.relax)
			if !ok {
				for _, other := range c.queues {
					if ok2, _ := eligibleBase(v, t.queues[other].cfg.Skills, 0); ok2 {
						ok = true
						_, sum = eligibleBase(v, q.cfg.Skills, 10)
						break
					}
				}
			}
			if !ok {
				continue
			}
			st.eligible = append(st.eligible, v)
			st.skillSum = append(st.skillSum, sum)
			if !v.hasQueue(q) {
				v.queues = append(v.queues, queueStep{q: q, minStep: si})
			}
		}
		q.steps = append(q.steps, st)
	}
	return nil
}

func (v *agentView) hasQueue(q *queue) bool {
	for _, qs := range v.queues {
		if qs.q == q {
			return true
		}
	}
	return false
}

// stepAt returns the overflow step in force after waiting wait.
func (q *queue) stepAt(wait time.Duration) int {
	s := 0
	for i := 1; i < len(q.steps); i++ {
		if wait >= q.steps[i].after {
			s = i
		}
	}
	return s
}

func (v *agentView) free(ci int) bool {
	return v.ready && !v.unreachable && v.used[ci] < v.cap[ci]
}

// less orders waiting interactions: priority desc, then enqueue time, then arrival.
func less(a, b *waiter) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if !a.EnqueuedAt.Equal(b.EnqueuedAt) {
		return a.EnqueuedAt.Before(b.EnqueuedAt)
	}
	return a.seq < b.seq
}

// Enqueue queues an interaction and, if nothing of its channel waits ahead of it in
// its queue, tries to reserve an agent for it at once.
func (r *Router) Enqueue(w Waiting) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	q, ok := r.queues[w.Queue]
	if !ok {
		return fmt.Errorf("router: enqueue %s: %w: %s", w.ID, ErrUnknownQueue, w.Queue)
	}
	if _, dup := r.waiters[w.ID]; dup {
		return fmt.Errorf("router: enqueue %s: %w", w.ID, ErrAlreadyQueued)
	}
	if len(r.waiters) >= r.maxWaiting {
		return fmt.Errorf("router: enqueue %s: %w (%d)", w.ID, ErrFull, r.maxWaiting)
	}
	if w.EnqueuedAt.IsZero() {
		w.EnqueuedAt = r.clock.Now()
	}
	r.nextSeq++
	wt := &waiter{Waiting: w, seq: r.nextSeq, q: q}
	i := sort.Search(len(q.waiting), func(i int) bool { return less(wt, q.waiting[i]) })
	q.waiting = append(q.waiting, nil)
	copy(q.waiting[i+1:], q.waiting[i:])
	q.waiting[i] = wt
	r.waiters[w.ID] = wt
	for _, ahead := range q.waiting[:i] {
		if ahead.Channel == w.Channel {
			return nil // the ones ahead get agents first
		}
	}
	r.routeLocked(wt, "interaction_arrived")
	return nil
}

// Remove takes an interaction out of its queue; it reports whether it was waiting.
func (r *Router) Remove(id core.InteractionID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	wt, ok := r.waiters[id]
	if !ok {
		return false
	}
	r.removeLocked(wt)
	return true
}

func (r *Router) removeLocked(wt *waiter) {
	delete(r.waiters, wt.ID)
	q := wt.q
	for i, x := range q.waiting {
		if x == wt {
			q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
			return
		}
	}
}

type scored struct {
	v     *agentView
	score float64
	tie   int64 // lower wins: idle-since nanoseconds
	why   string
}

// rank returns the top-n available agents for wt at its step, best first, and the
// number of agents eligible by skill.
func (r *Router) rank(wt *waiter, st *step, now time.Time, n int) ([]scored, int) {
	ci := wt.Channel.Index()
	q := wt.q
	top := r.scratch[:0]
	nowNs := now.UnixNano()
	strategy := q.cfg.Strategy
	for i, v := range st.eligible {
		if !v.free(ci) {
			continue
		}
		c := scored{v: v, tie: v.idleSince}
		switch strategy {
		case config.StrategyMostSkilled:
			c.score = float64(st.skillSum[i])
		case config.StrategyRoundRobin:
			c.score = -float64((v.index - q.rrLast - 1 + 2*len(r.byIndex)) % len(r.byIndex))
		case config.StrategyLeastOccupied:
			c.score = -float64(v.used[ci]) / float64(v.cap[ci])
		default: // longest-idle: milliseconds idle
			c.score = float64((nowNs - v.idleSince) / 1e6)
		}
		// Insert into top (kept sorted, best first, at most n).
		pos := len(top)
		for pos > 0 && better(c, top[pos-1]) {
			pos--
		}
		if pos >= n {
			continue
		}
		if len(top) < n {
			top = append(top, scored{})
		}
		copy(top[pos+1:], top[pos:len(top)-1])
		top[pos] = c
	}
	r.scratch = top
	return top, len(st.eligible)
}

func better(a, b scored) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	if a.tie != b.tie {
		return a.tie < b.tie
	}
	return a.v.index < b.v.index
}

// routeLocked tries to reserve an agent for wt; on success wt leaves the queue.
// Candidates are tried best first; every refusal marks that agent unavailable in
// the view (until its next event) and ranking starts again, so an interaction never
// waits while an agent the view believes free has not been tried.
func (r *Router) routeLocked(wt *waiter, direction string) bool {
	if r.draining {
		return false
	}
	start := r.clock.Now()
	q := wt.q
	wait := start.Sub(wt.EnqueuedAt)
	si := q.stepAt(wait)
	wt.lastStep = si
	st := &q.steps[si]
	d := events.Decision{
		Direction: direction, Strategy: string(q.cfg.Strategy), Step: si, Queues: st.queues,
		Eligible: len(st.eligible), WaitMillis: wait.Milliseconds(), Outcome: "no_agent",
	}
	done := false
	for round := 0; !done && round <= len(st.eligible); round++ {
		top, _ := r.rank(wt, st, start, r.candidates)
		if len(top) == 0 {
			break
		}
		base := len(d.Candidates)
		if d.Candidates == nil {
			d.Candidates = make([]events.Candidate, 0, len(top))
		}
		for _, c := range top {
			d.Candidates = append(d.Candidates, events.Candidate{Agent: c.v.id, Score: c.score, Result: "not_tried"})
		}
		for i, c := range top {
			res, result := r.tryLocked(wt, c.v, wait)
			d.Candidates[base+i].Result = result
			if res == tryGranted || res == tryGone {
				if res == tryGranted {
					d.Chosen, d.Outcome = c.v.id, "reserved"
				} else {
					d.Outcome = "interaction_gone"
				}
				done = true
				break
			}
			d.Outcome = "all_denied"
		}
	}
	r.recordLocked(wt, start, d)
	return d.Outcome == "reserved"
}

type tryResult int

const (
	tryGranted tryResult = iota
	tryRefused
	tryGone
)

// tryLocked reserves agent v for wt and hands the grant to the Offerer. On success
// wt leaves its queue. A refusal marks v unavailable on the channel until its next
// event. It returns the outcome and the candidate's result text.
func (r *Router) tryLocked(wt *waiter, v *agentView, wait time.Duration) (tryResult, string) {
	q := wt.q
	ci := wt.Channel.Index()
	g, err := r.reserver.Reserve(agent.ReserveRequest{Agent: v.id, Interaction: wt.ID, Channel: wt.Channel, TTL: q.cfg.OfferTimeout.D()})
	if err != nil {
		v.used[ci] = v.cap[ci]
		var deny *agent.DenyError
		if errors.As(err, &deny) {
			return tryRefused, "denied:" + string(deny.Reason)
		}
		r.logger.Warn("reserve failed", "agent", v.id, "interaction", wt.ID, "err", err)
		return tryRefused, "error:" + err.Error()
	}
	r.applyStateLocked(v, g.State)
	switch r.offerer.Offer(Offer{Interaction: wt.ID, Queue: q.cfg.ID, Grant: g, Wait: wait}) {
	case OfferGone:
		r.removeLocked(wt)
		return tryGone, "granted:interaction_gone"
	case OfferDead:
		v.used[ci] = v.cap[ci]
		return tryRefused, "granted:lease_expired_before_offer"
	}
	if q.cfg.Strategy == config.StrategyRoundRobin {
		q.rrLast = v.index
	}
	r.removeLocked(wt)
	q.stats.offered++
	return tryGranted, "granted"
}

func (r *Router) recordLocked(wt *waiter, start time.Time, d events.Decision) {
	d.DecisionMicros = r.clock.Now().Sub(start).Microseconds()
	if _, err := r.log.Append(events.Event{
		Time: start.UTC(), Type: events.TypeDecision, Interaction: wt.ID, Queue: wt.q.cfg.ID, Data: d,
	}); err != nil {
		r.logger.Error("record decision", "interaction", wt.ID, "err", err)
	}
}

// feedBatch is how many events the feed applies per hold of the router's lock.
const feedBatch = 32

// ApplyAgentState updates the view of one agent from its owner's event and, if the
// agent has free capacity, offers it the best waiting interaction.
func (r *Router) ApplyAgentState(id core.AgentID, st events.AgentState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applyEventLocked(id, st)
}

func (r *Router) applyEventLocked(id core.AgentID, st events.AgentState) {
	v, ok := r.agents[id]
	if !ok {
		return
	}
	// An older version is not applied (a grant's newer state got here first), but
	// the view may show a slot that freed meanwhile: look for work either way.
	if newerState(v, st) {
		r.applyStateLocked(v, st)
	}
	r.agentFreedLocked(v)
}

// newerState reports whether st is newer than what v shows: a later directory
// fence (the agent moved to another owner), else a later owner epoch, else the
// same epoch and a later version.
func newerState(v *agentView, st events.AgentState) bool {
	return compareState(v, st) > 0
}

// compareState orders st against v's state by (fence, epoch, version).
func compareState(v *agentView, st events.AgentState) int {
	if c := cmp.Compare(st.Fence, v.fence); c != 0 {
		return c
	}
	if c := cmp.Compare(st.Epoch, v.epoch); c != 0 {
		return c
	}
	return cmp.Compare(st.Version, v.version)
}

func (r *Router) applyStateLocked(v *agentView, st events.AgentState) {
	if compareState(v, st) < 0 {
		return
	}
	v.fence, v.epoch, v.version = st.Fence, st.Epoch, st.Version
	v.stated = true
	v.ready = st.Presence == "ready"
	v.idleSince = st.IdleSince.UnixNano()
	v.used = [core.NumChannels]int32{}
	for _, l := range st.Load {
		if i := l.Channel.Index(); i >= 0 {
			v.cap[i] = int32(l.Capacity)
			v.used[i] = int32(l.Offered + l.Busy + l.WrapUp)
		}
	}
}

// agentFreedLocked gives agent v the best waiting interactions it can take, channel
// by channel, while it has free capacity.
func (r *Router) agentFreedLocked(v *agentView) {
	if !v.ready || v.unreachable || len(r.waiters) == 0 {
		return
	}
	now := r.clock.Now()
	for _, ch := range core.Channels {
		ci := ch.Index()
		for v.free(ci) {
			var best *waiter
			for _, qs := range v.queues {
				for _, w := range qs.q.waiting {
					if w.Channel != ch || qs.q.stepAt(now.Sub(w.EnqueuedAt)) < qs.minStep {
						continue
					}
					if best == nil || less(w, best) {
						best = w
					}
					break // waiting is sorted: the first fit is the queue's best
				}
			}
			if best == nil {
				break
			}
			if r.fair != nil && r.fair.Defer(v.queueIDs(), ch, best.Priority, best.EnqueuedAt) {
				break // an interaction waiting at another node goes first
			}
			if !r.routeAgentLocked(best, v) {
				break
			}
		}
	}
}

// routeAgentLocked reserves agent v for wt (agent-freed direction).
func (r *Router) routeAgentLocked(wt *waiter, v *agentView) bool {
	if r.draining {
		return false
	}
	start := r.clock.Now()
	q := wt.q
	wait := start.Sub(wt.EnqueuedAt)
	si := q.stepAt(wait)
	st := &q.steps[si]
	d := events.Decision{
		Direction: "agent_freed", Strategy: string(q.cfg.Strategy), Step: si, Queues: st.queues,
		Eligible: len(st.eligible), WaitMillis: wait.Milliseconds(), Outcome: "all_denied",
		Candidates: []events.Candidate{{Agent: v.id, Why: "agent became free; best waiting interaction of its queues (priority " + strconv.Itoa(wt.Priority) + ")"}},
	}
	res, result := r.tryLocked(wt, v, wait)
	d.Candidates[0].Result = result
	switch res {
	case tryGranted:
		d.Chosen, d.Outcome = v.id, "reserved"
	case tryGone:
		d.Outcome = "interaction_gone"
	}
	r.recordLocked(wt, start, d)
	return res != tryRefused
}

// Tick applies overflow steps and max wait. Run calls it every TickInterval; tests
// call it after moving a fake clock.
func (r *Router) Tick() {
	var timedOut []Waiting
	r.mu.Lock()
	now := r.clock.Now()
	for _, q := range r.order {
		if len(q.waiting) == 0 || (len(q.steps) == 1 && q.cfg.MaxWait == 0) {
			continue
		}
		for _, w := range append([]*waiter(nil), q.waiting...) {
			wait := now.Sub(w.EnqueuedAt)
			if q.cfg.MaxWait > 0 && wait >= q.cfg.MaxWait.D() {
				r.removeLocked(w)
				q.stats.timedOut++
				timedOut = append(timedOut, w.Waiting)
				continue
			}
			if s := q.stepAt(wait); s > w.lastStep {
				r.routeLocked(w, "overflow_step")
			}
		}
	}
	r.mu.Unlock()
	if r.onTimeout != nil {
		for _, w := range timedOut {
			r.onTimeout(w)
		}
	}
}

// resync rebuilds the view from the owner's snapshots and offers free agents work.
func (r *Router) resync() {
	if r.owner == nil {
		return
	}
	views := r.owner.Snapshots()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, av := range views {
		if v, ok := r.agents[av.ID]; ok && compareState(v, av.State) >= 0 {
			r.applyStateLocked(v, av.State)
		}
	}
	for _, av := range views {
		if v, ok := r.agents[av.ID]; ok {
			r.agentFreedLocked(v)
		}
	}
}

// SetUnreachable takes agents out of routing while their owner is down (a
// reservation could not reach it), or brings them back and offers them work.
func (r *Router) SetUnreachable(ids []core.AgentID, unreachable bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		v, ok := r.agents[id]
		if !ok {
			continue
		}
		v.unreachable = unreachable
	}
	if !unreachable {
		for _, id := range ids {
			if v, ok := r.agents[id]; ok {
				r.agentFreedLocked(v)
			}
		}
	}
}

// SetDraining stops (or resumes) new reservations; queued interactions stay queued.
func (r *Router) SetDraining(d bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.draining = d
}

// Run follows the event log from seq after, applying agent events to the view, and
// ticks overflow. It returns when ctx ends.
func (r *Router) Run(ctx context.Context, after uint64) error {
	t := time.NewTicker(r.tick)
	defer t.Stop()
	buf := make([]events.Event, 0, 512)
	for {
		evs, more, err := r.log.Read(after, feedBatch, buf)
		if errors.Is(err, events.ErrClosed) {
			return nil
		}
		if err != nil {
			// We fell out of the window: take the owners' current state, then follow
			// the log from here (older events are ignored by version).
			r.logger.Warn("router feed gap; resyncing the agent view", "after", after, "err", err)
			after = r.log.LastSeq()
			r.resync()
			continue
		}
		// Apply in small batches under one lock hold: fewer hand-offs of the lock
		// with the routing path, each short enough not to delay it much.
		for i := 0; i < len(evs); i += feedBatch {
			batch := evs[i:min(i+feedBatch, len(evs))]
			r.mu.Lock()
			for _, ev := range batch {
				if ev.Type == events.TypeAgentState {
					if st, ok := ev.Data.(events.AgentState); ok {
						r.applyEventLocked(ev.Agent, st)
					}
				}
			}
			after = batch[len(batch)-1].Seq
			r.feedSeq = after
			r.mu.Unlock()
		}
		if len(evs) > 0 {
			select {
			case <-t.C: // a busy feed must not starve overflow and max wait
				r.Tick()
			default: // keep reading
			}
			continue
		}
		select {
		case <-ctx.Done(): // shutting down
			return nil
		case <-more: // new events appended
		case <-t.C: // overflow steps and max wait
			r.Tick()
		}
	}
}
