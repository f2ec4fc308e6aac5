package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/ccmesh/ccmesh/internal/config"
)

const configUsage = `usage:
  ccmesh config show [--url http://127.0.0.1:8080] [--token TOKEN]
  ccmesh config push FILE [--url http://127.0.0.1:8080] [--token TOKEN] [--if-revision N]`

// configCmd runs `ccmesh config show|push`: the shared configuration (agents
// and queues) of a running node, and a new revision of it (an admin token;
// replicated to every member in a cluster).
func configCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "show" && args[0] != "push") {
		fmt.Fprintln(stderr, configUsage)
		return 2
	}
	verb, rest := args[0], args[1:]
	var file string
	if verb == "push" {
		if len(rest) == 0 || rest[0] == "" || rest[0][0] == '-' {
			fmt.Fprintln(stderr, "ccmesh config push: the file to push comes first\n"+configUsage)
			return 2
		}
		file, rest = rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("config "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8080", "the node's HTTP API")
	token := fs.String("token", os.Getenv("CCMESH_TOKEN"), "an admin API token (default $CCMESH_TOKEN)")
	ifRev := fs.Uint64("if-revision", 0, "push only if the latest revision is still this one (0: never changed)")
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if *token == "" {
		fmt.Fprintf(stderr, "ccmesh config %s: --token (or $CCMESH_TOKEN) is required\n", verb)
		return 2
	}
	if verb == "show" {
		body, code := apiCall(stderr, "config show", "GET", *url, "/api/v1/config/shared", *token, nil, nil)
		if code != 0 {
			return code
		}
		var st struct {
			Revision uint64 `json:"revision"`
			Source   string `json:"source"`
			YAML     string `json:"yaml"`
		}
		if err := json.Unmarshal(body, &st); err != nil {
			fmt.Fprintf(stderr, "ccmesh config show: bad answer: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "revision %d (%s)\n", st.Revision, st.Source)
		_, _ = io.WriteString(stdout, st.YAML)
		return 0
	}
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(stderr, "ccmesh config push: %v\n", err)
		return 2
	}
	// Catch what the file alone shows before sending it; the node validates
	// the rest against its own configuration.
	if _, err := config.ParseShared(data); err != nil {
		fmt.Fprintf(stderr, "ccmesh config push: %s: %v\n", file, err)
		return 1
	}
	headers := map[string]string{"Content-Type": "application/yaml"}
	conditional := false
	fs.Visit(func(f *flag.Flag) { conditional = conditional || f.Name == "if-revision" })
	if conditional {
		headers["If-Match"] = strconv.Quote(strconv.FormatUint(*ifRev, 10))
	}
	body, code := apiCall(stderr, "config push", "PUT", *url, "/api/v1/config/shared", *token, bytes.NewReader(data), headers)
	if code != 0 {
		return code
	}
	var res struct {
		Revision    uint64 `json:"revision"`
		AppliedHere bool   `json:"applied_here"`
		Pending     bool   `json:"pending"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		fmt.Fprintf(stderr, "ccmesh config push: bad answer: %v\n", err)
		return 1
	}
	if res.Pending {
		fmt.Fprintln(stdout, "the cluster's quorum is out of reach: configuration kept by the node, written when it is back (unless it changed meanwhile)")
		return 0
	}
	if !res.AppliedHere {
		fmt.Fprintf(stdout, "configuration revision %d written; the node has not applied it yet (see its log)\n", res.Revision)
		return 0
	}
	fmt.Fprintf(stdout, "configuration revision %d in force\n", res.Revision)
	return 0
}
