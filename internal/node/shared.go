package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ccmesh/ccmesh/internal/api"
	"github.com/ccmesh/ccmesh/internal/atomicfile"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/mesh"
	"github.com/ccmesh/ccmesh/internal/sip"
)

// The shared configuration (ADR 0007): agents and queues, changed at run time
// through PUT /api/v1/config/shared. In a cluster a change is a new revision
// in the replicated bucket, and every member applies it when it sees it;
// alone, the node applies it at once. Each applied revision is kept in
// data_dir/shared-config.yaml, the last-known-good copy a node starts from
// (even alone) instead of its file's agents and queues.

// sharedFile is the last-known-good copy's name in the data directory.
const sharedFile = "shared-config.yaml"

// revisionHeader starts the last-known-good copy's first line.
const revisionHeader = "# ccmesh shared configuration, revision "

// shared is the shared configuration in force; mu also serialises changes.
type shared struct {
	mu     sync.Mutex
	rev    uint64
	source string
	data   []byte
	cfg    *config.Config
}

// current is the configuration in force.
func (s *shared) current() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// lastKnownGood reads the copy kept by a previous run. No copy: ok is false.
func lastKnownGood(dataDir string) (rev uint64, data []byte, ok bool, err error) {
	data, err = os.ReadFile(filepath.Join(dataDir, sharedFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("node: read the last-known-good configuration: %w", err)
	}
	first, _, _ := strings.Cut(string(data), "\n")
	rev, err = strconv.ParseUint(strings.TrimPrefix(first, revisionHeader), 10, 64)
	if !strings.HasPrefix(first, revisionHeader) || err != nil {
		return 0, nil, false, fmt.Errorf("node: %s: first line must be %q followed by the revision", sharedFile, revisionHeader)
	}
	return rev, data, true, nil
}

// saveLastKnownGood writes the copy atomically.
func saveLastKnownGood(dataDir string, rev uint64, data []byte) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%d\n# written %s; agents and queues here win over the configuration file's\n",
		revisionHeader, rev, time.Now().UTC().Format(time.RFC3339))
	// Drop a previous header so copies do not pile up headers.
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for sc.Scan() {
		if line := sc.Text(); !strings.HasPrefix(line, revisionHeader) && !strings.HasPrefix(line, "# written ") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(dataDir, sharedFile), b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("node: save the configuration: %w", err)
	}
	return nil
}

// startingConfig is cfg with the last-known-good agents and queues when a
// previous run kept a valid copy; otherwise cfg as its file says.
func startingConfig(cfg *config.Config, logger *slog.Logger) (*config.Config, *shared, error) {
	rev, data, ok, err := lastKnownGood(cfg.Node.DataDir)
	if err != nil {
		return nil, nil, err
	}
	if ok {
		sc, err := config.ParseShared(data)
		var c *config.Config
		if err == nil {
			c, err = cfg.WithShared(sc)
		}
		if err == nil {
			logger.Info("agents and queues from the last-known-good configuration", "revision", rev,
				"file", filepath.Join(cfg.Node.DataDir, sharedFile), "agents", len(c.Agents), "queues", len(c.Queues))
			return c, &shared{rev: rev, source: "last_known_good", data: data, cfg: c}, nil
		}
		logger.Error("the last-known-good configuration does not fit this node's file; using the file's agents and queues",
			"revision", rev, "err", err)
	}
	data, err = yaml.Marshal(cfg.Shared())
	if err != nil {
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	return cfg, &shared{source: "file", data: data, cfg: cfg}, nil
}

// Shared is the shared configuration in force (api.SharedConfig).
func (n *Node) Shared() api.SharedState {
	n.shared.mu.Lock()
	defer n.shared.mu.Unlock()
	return api.SharedState{Revision: n.shared.rev, Source: n.shared.source, YAML: string(n.shared.data)}
}

// PutShared validates data against this node's configuration and makes it the
// next revision: written to the replicated bucket in a cluster (every member,
// this one included, applies it from there; PutShared waits briefly for this
// node to, and says whether it did), applied at once alone (api.SharedConfig).
func (n *Node) PutShared(ctx context.Context, data []byte, expect uint64, conditional bool) (uint64, bool, error) {
	c, err := n.validShared(data, n.shared.current())
	if err != nil {
		return 0, false, err
	}
	if n.mesh != nil {
		// Its sound files must load here, as each member will check for itself
		// when it applies the revision; better refused now than by every member.
		if n.sip != nil {
			if _, _, err := n.voicePlan(c.Queues); err != nil {
				return 0, false, fmt.Errorf("%w: %w", config.ErrInvalid, err)
			}
		}
		rev, err := n.mesh.PutSharedConfig(ctx, data, expect, conditional, n.Shared().Revision)
		if err != nil {
			return 0, false, err
		}
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if n.Shared().Revision >= rev {
				return rev, true, nil
			}
		}
		return rev, false, nil
	}
	n.shared.mu.Lock()
	defer n.shared.mu.Unlock()
	if conditional && expect != n.shared.rev {
		return 0, false, fmt.Errorf("node: configuration at revision %d, not %d: %w", n.shared.rev, expect, mesh.ErrConfigConflict)
	}
	rev := n.shared.rev + 1
	if err := n.applySharedLocked(rev, data, c, "local"); err != nil {
		return 0, false, err
	}
	return rev, true, nil
}

// validShared parses and validates a shared configuration against this
// node's own, and (in a cluster) against cur, the one in force; errors wrap
// config.ErrInvalid.
func (n *Node) validShared(data []byte, cur *config.Config) (*config.Config, error) {
	sc, err := config.ParseShared(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	c, err := n.cfg.WithShared(sc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	if n.mesh != nil {
		if err := sameOwners(cur, c); err != nil {
			return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
	}
	return c, nil
}

// sameOwners refuses a document that changes the configured owner of an
// existing agent (her home): both owners would speak for her at fence 0 and
// the views could not tell which is current. Moving an agent is a login at
// the new node (ADR 0006).
func sameOwners(old, c *config.Config) error {
	before := mesh.Owners(old.Cluster.Members, old.Agents)
	after := mesh.Owners(c.Cluster.Members, c.Agents)
	for i, a := range c.Agents {
		if was, ok := before[a.ID]; ok && was != after[a.ID] {
			return fmt.Errorf("agents[%d].home: agent %s's configured owner would change from %s to %s at run time; log her in at %s instead (that moves her)",
				i, a.ID, was, after[a.ID], after[a.ID])
		}
	}
	return nil
}

// onReplicated applies a revision of the replicated configuration (the mesh's
// watch). Revisions already in force are skipped; one this node cannot
// accept (it does not validate with this node's file) is refused loudly and
// the node keeps the one it has.
func (n *Node) onReplicated(rev uint64, data []byte) {
	n.shared.mu.Lock()
	defer n.shared.mu.Unlock()
	if rev <= n.shared.rev {
		if rev < n.shared.rev && !bytes.Equal(data, n.shared.data) {
			// A bucket re-created since this node's copy was saved: its
			// revisions start again. Say so rather than ignore it silently.
			n.logger.Warn("replicated configuration older than the one in force; keeping ours (push a new revision to settle it)",
				"revision", rev, "in_force", n.shared.rev)
		}
		return
	}
	c, err := n.validShared(data, n.shared.cfg)
	if err == nil {
		err = n.applySharedLocked(rev, data, c, "replicated")
	}
	if err != nil {
		n.logger.Error("replicated configuration refused; keeping the one in force", "revision", rev, "in_force", n.shared.rev, "err", err)
	}
}

// applySharedLocked puts a validated configuration in force and keeps it as
// the last-known-good copy.
func (n *Node) applySharedLocked(rev uint64, data []byte, c *config.Config, source string) error {
	if err := n.reconfigure(c); err != nil {
		return err
	}
	if err := saveLastKnownGood(n.cfg.Node.DataDir, rev, data); err != nil {
		// In force but not kept: the next start uses the older copy (or the
		// file) until a later revision is saved.
		n.logger.Error("configuration applied but not saved", "revision", rev, "err", err)
	}
	n.shared.rev, n.shared.source, n.shared.data, n.shared.cfg = rev, source, data, c
	n.logger.Info("configuration changed", "revision", rev, "source", source, "agents", len(c.Agents), "queues", len(c.Queues))
	return nil
}

// reconfigure changes every component to configuration c (agents and queues;
// the rest is this node's and unchanged). Sounds are loaded first, so a
// missing file changes nothing.
func (n *Node) reconfigure(c *config.Config) error {
	var routes map[string]core.QueueID
	var voice map[core.QueueID]sip.QueueVoice
	if n.sip != nil {
		var err error
		if routes, voice, err = n.voicePlan(c.Queues); err != nil {
			return fmt.Errorf("%w: %w", config.ErrInvalid, err)
		}
	}
	// The router first: it validates before it changes anything, and a queue
	// added is known to it before interactions arrive for it.
	dropped, err := n.router.Reconfigure(c.Queues, c.Agents)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := n.ix.Reconfigure(c.Queues); err != nil {
		// Business hours were validated with the document: not expected.
		return fmt.Errorf("node: %w", err)
	}
	owners := func(owned []config.Agent) {
		if removed := n.agents.Reconfigure(owned); len(removed) > 0 {
			n.logger.Info("agents removed by the configuration", "agents", removed)
		}
	}
	if n.mesh != nil {
		n.mesh.SetAgents(c.Agents, owners) // no move in between
	} else {
		owners(c.Agents)
	}
	n.ix.QueueRemoved(dropped)
	if n.sip != nil {
		n.sip.SetQueues(routes, voice)
	}
	n.dir.Store(newDirectory(c.Agents))
	n.api.SetAgents(c.Agents)
	return nil
}
