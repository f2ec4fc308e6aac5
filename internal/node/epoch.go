package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/atomicfile"
)

// nextEpoch returns this run's owner epoch: the current time in nanoseconds,
// but always above the previous run's (kept in dir/epoch), so a clock that
// stepped back across a restart cannot make the cluster ignore this run's
// agent states or accept the previous run's tokens (ADR 0002, 0006). The new
// epoch is on disk before it is used.
func nextEpoch(dir string, now time.Time) (uint64, error) {
	path := filepath.Join(dir, "epoch")
	epoch := uint64(now.UnixNano())
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		prev, perr := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if perr != nil {
			return 0, fmt.Errorf("node: %s: not an epoch: %q", path, data)
		}
		epoch = max(epoch, prev+1)
	case !os.IsNotExist(err):
		return 0, fmt.Errorf("node: read epoch: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(strconv.FormatUint(epoch, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("node: write epoch: %w", err)
	}
	return epoch, nil
}
