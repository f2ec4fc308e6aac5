package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ccmesh/ccmesh/internal/atomicfile"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/media"
	"github.com/ccmesh/ccmesh/internal/mesh"
	"github.com/ccmesh/ccmesh/internal/sip"
)

// Sound kinds, as the configuration and the mesh name them.
const (
	soundAnnouncement = "announcement"
	soundMusic        = "music"
	soundClosed       = "closed"
)

// soundPaths are a queue's sound files by kind.
func soundPaths(q config.Queue) map[string]string {
	return map[string]string{soundAnnouncement: q.Sounds.Announcement, soundMusic: q.Sounds.Music, soundClosed: q.Sounds.Closed}
}

// peerSound is one sound a queue takes from a peer's media service.
type peerSound struct {
	resource config.Resource
	queue    core.QueueID // the peer's queue
	kind     string
}

func (s peerSound) String() string { return s.resource.ID + "/" + string(s.queue) + "/" + s.kind }

// path is where the last copy fetched is kept, so a node restarting alone
// still plays it.
func (s peerSound) path(dataDir string) string {
	return filepath.Join(dataDir, "peer-sounds", s.resource.ID, string(s.queue), s.kind+".wav")
}

// peerSounds keeps the sounds queues take from peers' media services
// (sounds.from, issue 5): fetched through the mesh when the peer is
// reachable, kept in data_dir, fetched again every soundsRefresh.
type peerSounds struct {
	dataDir string
	logger  *slog.Logger
	mu      sync.Mutex
	clips   map[peerSound]*media.Clip // nil value: the peer has none
	fetched map[peerSound]time.Time   // this run
	sums    map[peerSound][32]byte    // of the file fetched this run
}

// soundsRefresh is how often a peer's sound is fetched again; soundsRetry how
// soon after a failed fetch.
const (
	soundsRefresh = 5 * time.Minute
	soundsRetry   = 30 * time.Second
)

func newPeerSounds(dataDir string, logger *slog.Logger) *peerSounds {
	return &peerSounds{dataDir: dataDir, logger: logger, clips: map[peerSound]*media.Clip{}, fetched: map[peerSound]time.Time{}, sums: map[peerSound][32]byte{}}
}

// wanted lists the sounds queues take from peers: those a queue has no file
// for here (not set, or set but missing).
func wanted(queues []config.Queue, cl *config.ClusterConfig, self core.NodeID) map[core.QueueID]map[string]peerSound {
	out := map[core.QueueID]map[string]peerSound{}
	for _, q := range queues {
		r, ok := cl.PeerResource(q.Sounds.From, self)
		if !ok {
			continue // none, or this node's own: its files play
		}
		peerQ := r.Queue
		if peerQ == "" {
			peerQ = q.ID
		}
		for kind, path := range soundPaths(q) {
			if path != "" {
				if _, err := os.Stat(path); err == nil {
					continue
				}
			}
			if out[q.ID] == nil {
				out[q.ID] = map[string]peerSound{}
			}
			out[q.ID][kind] = peerSound{resource: r, queue: peerQ, kind: kind}
		}
	}
	return out
}

// clip returns the sound's clip: fetched this run, else the copy kept by an
// earlier one (nil: none yet).
func (p *peerSounds) clip(s peerSound) *media.Clip {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clips[s]; ok {
		return c
	}
	c, err := media.LoadWAVFile(s.path(p.dataDir))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			p.logger.Warn("a peer's sound kept here does not load", "sound", s.String(), "err", err)
		}
		return nil
	}
	p.clips[s] = c
	return c
}

// fetcher is what fetching needs of the mesh.
type fetcher interface {
	Reachable(core.NodeID) bool
	Sound(core.NodeID, core.QueueID, string) ([]byte, error)
}

// fetch gets the sounds due (never fetched this run, or older than
// soundsRefresh) from the peers that are reachable; it reports whether any
// changed.
func (p *peerSounds) fetch(mesh fetcher, want map[core.QueueID]map[string]peerSound, now time.Time) bool {
	changed := false
	for _, kinds := range want {
		for _, s := range kinds {
			p.mu.Lock()
			at, done := p.fetched[s]
			p.mu.Unlock()
			if done && now.Sub(at) < soundsRefresh || !mesh.Reachable(s.resource.Node) {
				continue
			}
			c, data, err := p.get(mesh, s)
			if err != nil {
				p.logger.Warn("fetch a peer's sound; trying again later", "sound", s.String(), "node", s.resource.Node, "err", err, "in", soundsRetry.String())
				p.mu.Lock()
				p.fetched[s] = now.Add(soundsRetry - soundsRefresh) // due again in soundsRetry
				p.mu.Unlock()
				continue
			}
			sum := sha256.Sum256(data)
			p.mu.Lock()
			old, had := p.sums[s]
			p.clips[s], p.fetched[s], p.sums[s] = c, now, sum
			p.mu.Unlock()
			if had && old == sum {
				continue // unchanged
			}
			changed = true
			if c == nil {
				_ = os.Remove(s.path(p.dataDir))
				continue
			}
			if err := os.MkdirAll(filepath.Dir(s.path(p.dataDir)), 0o750); err == nil {
				err = atomicfile.WriteFile(s.path(p.dataDir), data, 0o640)
			}
			if err != nil {
				p.logger.Warn("keep a peer's sound", "sound", s.String(), "err", err)
			}
			p.logger.Info("peer's sound in use", "sound", s.String(), "node", s.resource.Node, "duration", c.Duration().String())
		}
	}
	return changed
}

// get fetches one sound and checks it plays (nil clip: the peer has none).
func (p *peerSounds) get(mesh fetcher, s peerSound) (*media.Clip, []byte, error) {
	data, err := mesh.Sound(s.resource.Node, s.queue, s.kind)
	if err != nil || data == nil {
		return nil, nil, err
	}
	c, err := media.LoadWAV(bytes.NewReader(data))
	if err != nil {
		return nil, nil, fmt.Errorf("the peer's file: %w", err)
	}
	return c, data, nil
}

// serveSound reads this node's sound of a kind for queue q, for a peer
// (nil: none configured). Only files the configuration in force names are read.
func (n *Node) serveSound(q core.QueueID, kind string) ([]byte, error) {
	for _, cq := range n.shared.current().Queues {
		if cq.ID != q {
			continue
		}
		path, ok := soundPaths(cq)[kind]
		if !ok {
			return nil, fmt.Errorf("unknown sound kind %q", kind)
		}
		if path == "" {
			return nil, nil
		}
		fi, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, nil
		case err != nil:
			return nil, err
		case fi.Size() > mesh.MaxSoundBytes:
			return nil, fmt.Errorf("%s is %d bytes: at most %d are served to peers", path, fi.Size(), mesh.MaxSoundBytes)
		}
		return os.ReadFile(path)
	}
	return nil, nil
}

// runPeerSounds fetches the peers' sounds the queues use, every second until
// each is in, and re-plans the queues' voice when one changes.
func (n *Node) runPeerSounds(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		cfg := n.shared.current()
		if want := wanted(cfg.Queues, &n.cfg.Cluster, n.cfg.Node.ID); len(want) > 0 && n.sounds.fetch(n.mesh, want, time.Now()) {
			n.replanVoice()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// replanVoice rebuilds the queues' voice settings from the configuration in
// force (a peer's sound arrived).
func (n *Node) replanVoice() {
	n.shared.mu.Lock()
	defer n.shared.mu.Unlock()
	routes, voice, err := n.voicePlan(n.shared.cfg.Queues)
	if err != nil {
		n.logger.Error("re-plan the queues' sounds", "err", err)
		return
	}
	n.sip.SetQueues(routes, voice)
}

// voicePlan maps the queues' ids and DNs to them, with their voice settings:
// sound files loaded (one missing here, with sounds.from set, is the peer's,
// when fetched), and hand-overs to peers' queues.
func (n *Node) voicePlan(queues []config.Queue) (map[string]core.QueueID, map[core.QueueID]sip.QueueVoice, error) {
	want := wanted(queues, &n.cfg.Cluster, n.cfg.Node.ID)
	routes := map[string]core.QueueID{}
	voice := map[core.QueueID]sip.QueueVoice{}
	for _, q := range queues {
		routes[string(q.ID)], routes[string(q.DN)] = q.ID, q.ID
		qv := sip.QueueVoice{AnswerFirst: q.AnswerMode == config.AnswerFirst, Direct: q.Media == config.MediaDirect}
		for kind, dst := range map[string]**media.Clip{soundAnnouncement: &qv.Announcement, soundMusic: &qv.Music, soundClosed: &qv.Closed} {
			if s, ok := want[q.ID][kind]; ok {
				if n.sounds != nil {
					*dst = n.sounds.clip(s)
				}
				continue
			}
			path := soundPaths(q)[kind]
			if path == "" {
				continue
			}
			var err error
			if *dst, err = media.LoadWAVFile(path); err != nil {
				if q.Sounds.From != "" && errors.Is(err, fs.ErrNotExist) {
					continue // from this node's own media resource: none here
				}
				return nil, nil, fmt.Errorf("queue %s: %w", q.ID, err)
			}
		}
		for _, st := range q.Overflow {
			if r, ok := n.cfg.Cluster.PeerResource(st.To, n.cfg.Node.ID); ok {
				qv.Handover = &sip.Handover{After: st.After.D(), Resource: r.ID, Node: r.Node, URI: r.URI}
			}
		}
		voice[q.ID] = qv
	}
	return routes, voice, nil
}
