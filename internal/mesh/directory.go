package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/atomicfile"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
)

// The directory (ADR 0006): every agent's owner is its configured home (or
// rendezvous hash) until it moves; a move — the agent logging in at another
// node — is an entry in a replicated JetStream KV bucket, written with
// compare-and-swap, whose revision is the move's fence. Every node watches the
// bucket and computes the same owners from it; an owner stamps the fence on
// every state it publishes, and views order states by fence first, so the
// states of an owner the agent left lose to those of the one it moved to.

// ErrDirectoryUnavailable is a move attempted while the replicated directory
// cannot be read or written (JetStream not up yet, or no quorum).
var ErrDirectoryUnavailable = errors.New("cluster directory unavailable")

// ErrMoveConflict is a move that lost a race with another move of the agent.
var ErrMoveConflict = errors.New("agent moved concurrently")

// ownership is who owns an agent and under which directory revision (0: the
// configured owner).
type ownership struct {
	Node  core.NodeID `json:"owner"`
	Fence uint64      `json:"fence"`
}

// dirValue is a directory entry as stored in the bucket.
type dirValue struct {
	Owner core.NodeID `json:"owner"`
	// By and At say which node wrote it and when (for operators).
	By core.NodeID `json:"by"`
	At time.Time   `json:"at"`
}

// directory holds the ownership of every agent. owners is read lock-free on
// every reservation; the rest is guarded by mu.
type directory struct {
	owners atomic.Pointer[map[core.AgentID]ownership]
	kv     atomic.Pointer[kvHandle]

	// moveMu orders changes of ownership with the adoptions and releases
	// they cause (taken before mu).
	moveMu sync.Mutex

	mu      sync.Mutex
	members []core.NodeID
	agents  map[core.AgentID]config.Agent
	static  map[core.AgentID]core.NodeID
	moved   map[core.AgentID]ownership
	path    string // last-known directory, for a start without the cluster
	// self is this node; outbox holds the moves kept for the quorum (they
	// make self the owner until written or dropped).
	self   core.NodeID
	outbox outboxState
}

// kvHandle wraps the bucket so it fits an atomic.Pointer.
type kvHandle struct{ kv jetstream.KeyValue }

// directoryFile is the name of the cached directory in the data directory.
const directoryFile = "directory.json"

func newDirectory(self core.NodeID, members []core.NodeID, agents []config.Agent, dataDir string) *directory {
	d := &directory{self: self, members: members, moved: map[core.AgentID]ownership{},
		outbox: outboxState{Moves: map[core.AgentID]pendingMove{}}}
	if dataDir != "" {
		d.path = filepath.Join(dataDir, directoryFile)
	}
	d.setAgentsLocked(agents)
	return d
}

// setAgentsLocked replaces the configured agents and recomputes the owners.
func (d *directory) setAgentsLocked(agents []config.Agent) (old, now map[core.AgentID]ownership) {
	d.agents = make(map[core.AgentID]config.Agent, len(agents))
	for _, a := range agents {
		d.agents[a.ID] = a
	}
	d.static = Owners(d.members, agents)
	return d.rebuildLocked()
}

// rebuildLocked recomputes the owners: configured, overridden by moves to a
// member (a move to a node no longer a member is ignored).
func (d *directory) rebuildLocked() (old, now map[core.AgentID]ownership) {
	now = make(map[core.AgentID]ownership, len(d.static))
	for id, n := range d.static {
		now[id] = ownership{Node: n}
	}
	for id, o := range d.moved {
		if _, known := d.static[id]; known && slices.Contains(d.members, o.Node) {
			now[id] = o
		}
	}
	// A move kept for the quorum holds while the directory has not moved her
	// past the ownership it was based on; once it has, that move won.
	dropped := false
	for id, p := range d.outbox.Moves {
		cur, known := now[id]
		if !known || cur.Fence > p.Fence {
			delete(d.outbox.Moves, id)
			dropped = true
			continue
		}
		now[id] = ownership{Node: d.self, Fence: p.Fence}
	}
	if dropped {
		_ = d.saveOutboxLocked() // best effort: a stale entry is dropped again at the next start
	}
	if p := d.owners.Swap(&now); p != nil {
		old = *p
	}
	return old, now
}

// get returns an agent's ownership (zero for an unknown agent).
func (d *directory) get(id core.AgentID) ownership {
	return (*d.owners.Load())[id]
}

// load reads the cached directory of the previous run (absent: nothing moved).
func (d *directory) load() error {
	if d.path == "" {
		return nil
	}
	data, err := os.ReadFile(d.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mesh: read %s: %w", d.path, err)
	}
	var moved map[core.AgentID]ownership
	if err := json.Unmarshal(data, &moved); err != nil {
		return fmt.Errorf("mesh: %s is corrupt (remove it to start from the configured owners): %w", d.path, err)
	}
	if moved == nil {
		moved = map[core.AgentID]ownership{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.moved = moved
	d.rebuildLocked()
	return nil
}

// saveLocked writes the directory's moves atomically.
func (d *directory) saveLocked() error {
	if d.path == "" {
		return nil
	}
	data, err := json.Marshal(d.moved)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(d.path, data, 0o600); err != nil {
		return fmt.Errorf("mesh: save directory: %w", err)
	}
	return nil
}

// bucketName is the JetStream bucket of a cluster's kind of replicated state.
func bucketName(cluster, kind string) string {
	return "ccm_" + strings.ReplaceAll(cluster, "-", "_") + "_" + kind
}

// replicas is how many copies the cluster's buckets keep: every member up to three.
func (m *Mesh) replicas() int {
	return min(3, max(1, len(m.p.Config.Members)))
}

// openBucket opens (creating if needed) a replicated KV bucket, retrying while
// JetStream is not ready (a cluster electing its meta leader, or without
// quorum) until ctx ends. It logs once when it has to wait.
func (m *Mesh) openBucket(ctx context.Context, kind string, history uint8) (jetstream.KeyValue, error) {
	js, err := jetstream.New(m.nc)
	if err != nil {
		return nil, fmt.Errorf("mesh: JetStream: %w", err)
	}
	name := bucketName(m.p.Config.Name, kind)
	// A cluster elects its JetStream meta leader within seconds of its members
	// meeting: say so quietly at first, loudly if it lasts.
	told, warned, start := false, false, time.Now()
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err := openLeaderRead(cctx, js, name, history, m.replicas())
		cancel()
		if err == nil {
			if told {
				m.logger.Info("mesh: replicated bucket open", "bucket", name, "after", time.Since(start).Round(time.Millisecond).String())
			}
			return kv, nil
		}
		switch {
		case !told:
			m.logger.Info("mesh: replicated bucket not available yet (JetStream starting); retrying", "bucket", name, "err", err)
			told = true
		case !warned && time.Since(start) > 30*time.Second:
			m.logger.Warn("mesh: replicated bucket still not available: moves and configuration changes wait (no JetStream quorum?)", "bucket", name, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// openLeaderRead opens a KV bucket whose reads go to the stream's leader,
// creating it if needed. KV buckets normally allow "direct" reads, which any
// replica answers: a follower that lags answers an older revision, and a claim
// that read it would hand a move to the wrong owner or believe an agent
// already its own. The stream is created as nats.go creates a bucket, but
// without direct reads; every member creates it the same way (identical
// configurations are accepted), so no member switches it back.
func openLeaderRead(ctx context.Context, js jetstream.JetStream, bucket string, history uint8, replicas int) (jetstream.KeyValue, error) {
	cfg := jetstream.StreamConfig{
		Name: "KV_" + bucket, Subjects: []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: int64(history), MaxBytes: -1, MaxMsgSize: -1, MaxMsgs: -1, MaxConsumers: -1,
		Storage: jetstream.FileStorage, Replicas: replicas, AllowRollup: true, DenyDelete: true,
		Duplicates: 2 * time.Minute, Discard: jetstream.DiscardNew, AllowDirect: false,
	}
	st, err := js.Stream(ctx, cfg.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil // another member created it meanwhile
		}
	case err == nil && st.CachedInfo().Config.AllowDirect:
		c := st.CachedInfo().Config // a bucket made with direct reads (an older ccmesh)
		c.AllowDirect = false
		_, err = js.UpdateStream(ctx, c)
	}
	if err != nil {
		return nil, err
	}
	return js.KeyValue(ctx, bucket)
}

// runDirectory opens the directory bucket and follows it until ctx ends: the
// entries it holds replace the cached ones (the bucket is the truth, whatever
// the cache's fences), then every new entry is applied. A watch that fails is
// started again, with the same full resync.
func (m *Mesh) runDirectory(ctx context.Context) {
	kv, err := m.openBucket(ctx, "directory", 1)
	if err != nil {
		return
	}
	for wait := 500 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 10*time.Second) {
		err := m.watchDirectory(ctx, kv)
		if ctx.Err() != nil {
			return
		}
		m.logger.Warn("mesh: directory watch ended; watching again", "err", err, "in", wait.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// watchDirectory follows the bucket until the watch ends.
func (m *Mesh) watchDirectory(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	entries, err := m.currentEntries(ctx, w)
	if err != nil {
		return err
	}
	m.resetMoves(entries)
	m.dir.kv.Store(&kvHandle{kv})
	m.logger.Info("mesh: directory in sync", "moved", m.movedCount())
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("updates closed")
			}
			if e == nil {
				continue
			}
			if o, ok := m.parseEntry(e); ok {
				m.recordMove(core.AgentID(e.Key()), o)
			}
		}
	}
}

// currentEntries reads a new watch's first part: the bucket's current
// entries, up to the marker that ends them.
func (m *Mesh) currentEntries(ctx context.Context, w jetstream.KeyWatcher) (map[core.AgentID]ownership, error) {
	entries := map[core.AgentID]ownership{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, errors.New("updates closed")
			case e == nil:
				return entries, nil
			}
			if o, ok := m.parseEntry(e); ok && o.Node != "" {
				entries[core.AgentID(e.Key())] = o
			}
		}
	}
}

func (m *Mesh) movedCount() int {
	m.dir.mu.Lock()
	defer m.dir.mu.Unlock()
	return len(m.dir.moved)
}

// parseEntry reads one entry of the directory bucket: an owner and its
// fence, or the zero ownership for a deleted entry (back to the configured
// owner). A malformed entry is logged and skipped.
func (m *Mesh) parseEntry(e jetstream.KeyValueEntry) (ownership, bool) {
	if e.Operation() != jetstream.KeyValuePut {
		return ownership{}, true
	}
	var v dirValue
	if err := json.Unmarshal(e.Value(), &v); err != nil || v.Owner == "" {
		m.logger.Warn("mesh: bad directory entry ignored", "agent", e.Key(), "err", err)
		return ownership{}, false
	}
	return ownership{Node: v.Owner, Fence: e.Revision()}, true
}

// resetMoves makes the bucket's entries the directory, replacing what the
// cache said (entries it lacks, fences from a bucket since re-created).
func (m *Mesh) resetMoves(entries map[core.AgentID]ownership) {
	m.dir.moveMu.Lock()
	m.dir.mu.Lock()
	m.dir.moved = entries
	old, now := m.dir.rebuildLocked()
	if err := m.dir.saveLocked(); err != nil {
		m.logger.Warn("mesh: directory not cached", "err", err)
	}
	m.dir.mu.Unlock()
	changed := m.reconcile(old, now)
	m.dir.moveMu.Unlock()
	m.refreshReach(changed)
}

// recordMove applies a directory entry (zero: none, the configured owner) if it
// is newer than the one known, caches the directory, and adopts or lets go of
// the agent.
func (m *Mesh) recordMove(id core.AgentID, o ownership) {
	// Changes of the owners and the adoptions and releases they imply happen
	// in one order: the watch and a claim racing must not let an older
	// change's release undo a newer change's adoption.
	m.dir.moveMu.Lock()
	m.dir.mu.Lock()
	cur, ok := m.dir.moved[id]
	switch {
	case o.Node == "":
		delete(m.dir.moved, id)
	case ok && cur.Fence >= o.Fence:
		m.dir.mu.Unlock()
		m.dir.moveMu.Unlock()
		return // known already (this node wrote it, or a later move is)
	default:
		m.dir.moved[id] = o
	}
	old, now := m.dir.rebuildLocked()
	if err := m.dir.saveLocked(); err != nil {
		m.logger.Warn("mesh: directory not cached", "err", err)
	}
	m.dir.mu.Unlock()
	changed := m.reconcile(old, now)
	m.dir.moveMu.Unlock()
	m.refreshReach(changed)
}

// refreshReach marks agents whose owner changed routable or not by their new
// owner's health: out of routing if it is another member and down. Called
// without moveMu held (the router may reserve while offering work).
func (m *Mesh) refreshReach(ids []core.AgentID) {
	if m.view == nil || len(ids) == 0 {
		return
	}
	m.reachMu.Lock()
	defer m.reachMu.Unlock()
	var down, up []core.AgentID
	for _, id := range ids {
		if o := m.dir.get(id).Node; o != m.p.Node && m.health.state(o) == PeerDown {
			down = append(down, id)
		} else {
			up = append(up, id)
		}
	}
	m.view.SetUnreachable(down, true)
	m.view.SetUnreachable(up, false)
}

// reconcile makes the local agent manager hold exactly the agents the
// directory gives this node: it adopts those that moved here and lets go of
// those that moved away (see letGo for one busy here). It returns the agents
// whose owner changed (for refreshReach, once moveMu is released).
func (m *Mesh) reconcile(old, now map[core.AgentID]ownership) (changed []core.AgentID) {
	for id, o := range now {
		was := old[id]
		if was == o {
			continue
		}
		if was.Node != o.Node {
			changed = append(changed, id)
		}
		switch {
		case o.Node == m.p.Node:
			m.mu.Lock()
			delete(m.remote, id) // the previous owner's states are history
			m.mu.Unlock()
			a := m.dir.agent(id)
			if err := m.p.Local.Adopt(a, o.Fence); err != nil {
				m.logger.Error("mesh: adopt an agent that moved here", "agent", id, "err", err)
			} else {
				m.logger.Info("mesh: agent moved here", "agent", id, "from", was.Node, "fence", o.Fence)
			}
		case was.Node == m.p.Node:
			m.letGo(id, "moved")
		}
	}
	return changed
}

// letGo stops owning an agent that moved away. One still holding work here
// (taken over while this node did not answer) is made not ready — no new
// offers — and let go once her work ends: calls in progress are not cut.
func (m *Mesh) letGo(id core.AgentID, cause string) {
	err := m.p.Local.Detach(id, cause)
	if errors.Is(err, agent.ErrAgentBusy) {
		m.logger.Warn("mesh: agent moved away while busy here; no new offers, let go when her work ends", "agent", id)
		if err := m.p.Local.SetNotReady(id, cause); err != nil {
			m.logger.Warn("mesh: stop offers to an agent that moved away", "agent", id, "err", err)
		}
		go m.letGoWhenFree(id, cause)
		return
	}
	if err != nil && !errors.Is(err, agent.ErrUnknownAgent) {
		m.logger.Error("mesh: let go of an agent that moved away", "agent", id, "err", err)
		return
	}
	m.logger.Info("mesh: agent moved away", "agent", id, "to", m.dir.get(id).Node)
}

// letGoWhenFree detaches an agent that moved away once her work here ends,
// unless she moves back meanwhile.
func (m *Mesh) letGoWhenFree(id core.AgentID, cause string) {
	for !m.nc.IsClosed() {
		time.Sleep(500 * time.Millisecond)
		m.dir.moveMu.Lock()
		if m.dir.get(id).Node == m.p.Node {
			m.dir.moveMu.Unlock()
			return
		}
		err := m.p.Local.Detach(id, cause)
		m.dir.moveMu.Unlock()
		if !errors.Is(err, agent.ErrAgentBusy) {
			m.logger.Info("mesh: agent that moved away let go after her work ended", "agent", id, "err", err)
			return
		}
	}
}

func (d *directory) agent(id core.AgentID) config.Agent {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.agents[id]
}

// Claim moves agent id to this node (she logs in here): her owner hands her
// over — refused while she is busy there (agent.ErrAgentBusy) — then the move
// is written to the directory with compare-and-swap, and this node adopts her.
// An owner that does not answer is taken over: the directory write needs the
// cluster's quorum, so a node cut off from the majority cannot do it, and the
// old owner lets her go when it sees the move.
//
// Cut off from the quorum with her owner down, the move is kept in the
// outbox and she is this node's meanwhile (keepMove).
func (m *Mesh) Claim(ctx context.Context, id core.AgentID) error {
	err := m.claim(ctx, id, anyFence)
	if errors.Is(err, ErrDirectoryUnavailable) && m.keepMove(id) {
		return nil
	}
	return err
}

// anyFence lets claim move an agent from whatever the directory says now.
const anyFence = ^uint64(0)

// claim moves agent id here from the owner the bucket names, only at fence
// want unless it is anyFence (ErrMoveConflict otherwise).
func (m *Mesh) claim(ctx context.Context, id core.AgentID, want uint64) error {
	h := m.dir.kv.Load()
	if h == nil {
		return fmt.Errorf("mesh: move %s here: %w", id, ErrDirectoryUnavailable)
	}
	m.dir.mu.Lock()
	configured, known := m.dir.static[id]
	m.dir.mu.Unlock()
	if !known {
		return fmt.Errorf("mesh: move %s here: %w", id, agent.ErrUnknownAgent)
	}
	// The bucket, not this node's copy of it (which may lag), says who owns her.
	cur := ownership{Node: configured}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	e, err := h.kv.Get(rctx, string(id))
	cancel()
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("mesh: move %s here: %w: %w", id, ErrDirectoryUnavailable, err)
	default:
		o, ok := m.parseEntry(e)
		if !ok || o.Node == "" {
			return fmt.Errorf("mesh: move %s here: unreadable directory entry: %w", id, ErrMoveConflict)
		}
		cur = o
		m.recordMove(id, cur)
	}
	if cur.Node == m.p.Node {
		return nil
	}
	if want != anyFence && cur.Fence != want {
		return fmt.Errorf("mesh: move %s here at fence %d: the directory is at %d: %w", id, want, cur.Fence, ErrMoveConflict)
	}
	// Asked even if it just missed another request, and given longer than a
	// reservation: taking an agent over is not to be done on a hiccup.
	r, err := m.request(cur.Node, request{Op: opHandoff, Agent: id, Fence: cur.Fence}, max(m.timeout, handoffTimeout), false)
	switch {
	case errors.Is(err, ErrOwnerUnreachable):
		m.logger.Warn("mesh: the agent's owner does not answer; taking her over", "agent", id, "owner", cur.Node, "err", err)
	case err != nil:
		return fmt.Errorf("mesh: move %s here: %w", id, err)
	default:
		if err := r.err(id); err != nil {
			return fmt.Errorf("mesh: move %s here from %s: %w", id, cur.Node, err)
		}
	}
	val, err := json.Marshal(dirValue{Owner: m.p.Node, By: m.p.Node, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var rev uint64
	if cur.Fence == 0 {
		rev, err = h.kv.Create(wctx, string(id), val)
	} else {
		rev, err = h.kv.Update(wctx, string(id), val, cur.Fence)
	}
	if err != nil {
		if isCASConflict(err) {
			return fmt.Errorf("mesh: move %s here: %w", id, ErrMoveConflict)
		}
		return fmt.Errorf("mesh: move %s here: %w: %w", id, ErrDirectoryUnavailable, err)
	}
	m.recordMove(id, ownership{Node: m.p.Node, Fence: rev})
	return nil
}

// handoffGrace is how long an owner that handed an agent over waits to see the
// move in the directory before it asks the bucket and takes her back if the
// move never happened (the claimer failed to write it).
const handoffGrace = 5 * time.Second

// handoffTimeout is the least a claimer waits for the owner's hand-over.
const handoffTimeout = 2 * time.Second

// handOff is the owner's side of a move: the claimer read the directory at
// fence; the owner agrees only if it owns the agent at exactly that fence —
// checked with the bucket when its own copy differs, never taken on the
// claimer's word — and she holds no work here. She is let go at once; if the
// bucket does not show her moved within handoffGrace, she is taken back.
func (m *Mesh) handOff(id core.AgentID, to core.NodeID, fence uint64) error {
	if m.dir.get(id) != (ownership{Node: m.p.Node, Fence: fence}) {
		if err := m.syncEntry(id); err != nil {
			return err
		}
	}
	m.dir.moveMu.Lock()
	defer m.dir.moveMu.Unlock()
	before := m.dir.get(id)
	if before != (ownership{Node: m.p.Node, Fence: fence}) {
		return fmt.Errorf("mesh: hand over %s at fence %d: the directory says %s at %d: %w", id, fence, before.Node, before.Fence, ErrMoveConflict)
	}
	if err := m.p.Local.Detach(id, "moved"); err != nil {
		return err
	}
	m.logger.Info("mesh: agent handed over", "agent", id, "to", to)
	time.AfterFunc(handoffGrace, func() {
		if m.nc.IsClosed() || m.dir.get(id) != before {
			return
		}
		if err := m.syncEntry(id); err != nil {
			m.logger.Warn("mesh: check a hand-over in the directory", "agent", id, "err", err)
			return // the watch will tell
		}
		m.dir.moveMu.Lock()
		defer m.dir.moveMu.Unlock()
		if m.dir.get(id) == before {
			m.logger.Warn("mesh: handed-over agent not moved in the directory; taking her back", "agent", id, "to", to)
			if err := m.p.Local.Adopt(m.dir.agent(id), before.Fence); err != nil {
				m.logger.Error("mesh: take back an agent", "agent", id, "err", err)
			}
		}
	})
	return nil
}

// syncEntry reads an agent's directory entry at the bucket's leader and
// applies it (if newer than this node's).
func (m *Mesh) syncEntry(id core.AgentID) error {
	h := m.dir.kv.Load()
	if h == nil {
		return fmt.Errorf("mesh: read the directory: %w", ErrDirectoryUnavailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := h.kv.Get(ctx, string(id))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		m.recordMove(id, ownership{})
	case err != nil:
		return fmt.Errorf("mesh: read the directory: %w: %w", ErrDirectoryUnavailable, err)
	default:
		if o, ok := m.parseEntry(e); ok {
			m.recordMove(id, o)
		}
	}
	return nil
}

// SetAgents replaces the cluster's agents (a configuration change): apply
// receives those this node owns now (for its agent manager), with no move
// applied in between, and the agents that moved here keep their fences.
func (m *Mesh) SetAgents(agents []config.Agent, apply func(owned []config.Agent)) {
	m.dir.moveMu.Lock()
	defer func() {
		m.dir.moveMu.Unlock()
		ids := make([]core.AgentID, len(agents))
		for i, a := range agents {
			ids[i] = a.ID
		}
		m.refreshReach(ids) // new agents of a member that is down stay out of routing
	}()
	m.dir.mu.Lock()
	_, now := m.dir.setAgentsLocked(agents)
	m.dir.mu.Unlock()
	var owned []config.Agent
	for _, a := range agents {
		if now[a.ID].Node == m.p.Node {
			owned = append(owned, a)
		}
	}
	apply(owned)
	for _, a := range owned {
		if f := now[a.ID].Fence; f > 0 {
			if err := m.p.Local.Adopt(a, f); err != nil {
				m.logger.Error("mesh: keep a moved agent's fence", "agent", a.ID, "err", err)
			}
		}
	}
}

// DirectoryInSync reports whether this node has read the replicated directory
// (moves are possible only then).
func (m *Mesh) DirectoryInSync() bool { return m.dir.kv.Load() != nil }
