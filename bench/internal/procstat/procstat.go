// Package procstat reads a process's CPU time and memory from /proc (Linux), for
// the load tools in bench/.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Stat is one reading of a process.
type Stat struct {
	// OK is false when the process could not be read (gone, or no /proc).
	OK bool
	// CPU is user + system time so far.
	CPU time.Duration
	// RSSMiB and HWMMiB are the resident set and its peak; PSSMiB the
	// proportional set (shared pages divided among their users).
	RSSMiB, HWMMiB, PSSMiB float64
}

// Read reads pid's CPU time and memory.
func Read(pid int) Stat {
	var s Stat
	if pid <= 0 {
		return s
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s
	}
	// Fields after the command name "(...)": state is field 3, utime 14, stime 15.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return s
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
	s.RSSMiB = field(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
	s.HWMMiB = field(fmt.Sprintf("/proc/%d/status", pid), "VmHWM")
	s.PSSMiB = field(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss")
	s.OK = true
	return s
}

// field reads a "Key:  N kB" line of a /proc file, in MiB (0 when absent).
func field(path, key string) float64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		k, v, _ := strings.Cut(line, ":")
		if k == key {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// Cores is the CPU used between two readings, in cores.
func Cores(a, b Stat, over time.Duration) float64 {
	if !a.OK || !b.OK || over <= 0 {
		return 0
	}
	return (b.CPU - a.CPU).Seconds() / over.Seconds()
}

// Children lists pid and its direct children (a forking server's workers).
func Children(pid int) []int {
	out := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}
