package procstat

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestReadSelfAndChildren(t *testing.T) {
	s := Read(os.Getpid())
	if !s.OK || s.RSSMiB <= 0 || s.HWMMiB < s.RSSMiB || s.PSSMiB <= 0 {
		t.Fatalf("Read(self) = %+v", s)
	}
	if Read(-1).OK {
		t.Fatal("Read(-1) is OK")
	}
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	kids := Children(os.Getpid())
	found := false
	for _, k := range kids {
		found = found || k == cmd.Process.Pid
	}
	if kids[0] != os.Getpid() || !found {
		t.Fatalf("Children(self) = %v, want self first and %d", kids, cmd.Process.Pid)
	}
	a, b := Stat{OK: true, CPU: time.Second}, Stat{OK: true, CPU: 3 * time.Second}
	if got := Cores(a, b, 4*time.Second); got != 0.5 {
		t.Fatalf("Cores = %v, want 0.5", got)
	}
	if Cores(Stat{}, b, time.Second) != 0 {
		t.Fatal("Cores with an unread sample is not 0")
	}
}
