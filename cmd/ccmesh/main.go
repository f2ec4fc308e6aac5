// Command ccmesh runs a contact-center node.
//
//	ccmesh serve [--config FILE]   run a node (embedded sample configuration without --config)
//	ccmesh check --config FILE     validate a configuration and exit
//	ccmesh version                 print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/node"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  ccmesh serve [--config FILE] [--log-level debug|info|warn|error] [--pprof 127.0.0.1:6060]
  ccmesh check --config FILE
  ccmesh cluster status [--url http://127.0.0.1:8080] [--token TOKEN] [--json]
  ccmesh config show [--url URL] [--token TOKEN]
  ccmesh config push FILE [--url URL] [--token TOKEN] [--if-revision N]
  ccmesh version
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "check":
		return check(args[1:], stdout, stderr)
	case "cluster":
		return cluster(args[1:], stdout, stderr)
	case "config":
		return configCmd(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "ccmesh", versionString())
		return 0
	case "help", "--help", "-h":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "ccmesh: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		v += " (" + bi.GoVersion + ")"
	}
	return v
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file to validate")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "ccmesh check: --config FILE is required")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "ccmesh check: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK (node %s, %d agents, %d queues)\n", *path, cfg.Node.ID, len(cfg.Agents), len(cfg.Queues))
	return 0
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded sample configuration)")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiler (net/http/pprof) on this loopback host:port, for benchmarks")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pprofAddr != "" {
		if err := startProfiler(*pprofAddr); err != nil {
			fmt.Fprintf(stderr, "ccmesh serve: --pprof: %v\n", err)
			return 2
		}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "ccmesh serve: --log-level: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	tuneGC(logger)

	var cfg *config.Config
	if *path == "" {
		cfg = config.Default()
		logger.Info("no --config given: running the embedded sample configuration (see examples/single-node.yaml)")
	} else {
		var err error
		if cfg, err = config.Load(*path); err != nil {
			fmt.Fprintf(stderr, "ccmesh serve: %v\n", err)
			return 1
		}
	}

	// First SIGINT/SIGTERM drains; a second one exits at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		logger.Info("signal received: draining (send it again to exit at once)", "signal", s.String())
		cancel()
		s = <-sigs
		logger.Warn("second signal: exiting now", "signal", s.String())
		os.Exit(130)
	}()

	n, err := node.New(ctx, cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "ccmesh serve: %v\n", err)
		return 1
	}
	logger.Info("ccmesh "+versionString(), "node", cfg.Node.ID, "http", "http://"+n.HTTPAddr())
	if *path == "" {
		logger.Info("sample logins: agents ann..jon with password <id>-pass (e.g. ann / ann-pass); API tokens: admin ccmesh-admin-token-change-me, supervisor ccmesh-supervisor-token-change-me")
		logger.Info("try: curl -u ann:ann-pass -X POST http://" + n.HTTPAddr() + "/api/v1/agents/ann/login")
	}
	if err := n.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "ccmesh serve: %v\n", err)
		return 1
	}
	return 0
}

// gcPercent is the garbage collector's target when GOGC is not set. A node's
// live heap is large and steady — SIP transactions are kept 32 s after they
// end (RFC 3261 Timers H, J, L, M) — so the collector's work per cycle is
// high; twice Go's default headroom halves the cycles: ~10 % less CPU per
// call for ~20 % more memory (1,500 calls/s: 690–746 → 832–875 MiB; issue 6).
const gcPercent = 200

// tuneGC sets the collector's target to gcPercent unless the operator chose
// one with GOGC.
func tuneGC(logger *slog.Logger) {
	if v, ok := os.LookupEnv("GOGC"); ok {
		logger.Debug("garbage collector target from GOGC", "gogc", v)
		return
	}
	debug.SetGCPercent(gcPercent)
}
