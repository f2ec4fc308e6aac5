package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ccmesh/ccmesh/internal/mesh"
)

// cluster runs `ccmesh cluster status`: the members as a running node sees them.
func cluster(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprintln(stderr, "usage: ccmesh cluster status [--url http://127.0.0.1:8080] [--token TOKEN]")
		return 2
	}
	fs := flag.NewFlagSet("cluster status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8080", "the node's HTTP API")
	token := fs.String("token", os.Getenv("CCMESH_TOKEN"), "a supervisor or admin API token (default $CCMESH_TOKEN)")
	asJSON := fs.Bool("json", false, "print the API's JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *token == "" {
		fmt.Fprintln(stderr, "ccmesh cluster status: --token (or $CCMESH_TOKEN) is required: a supervisor or admin API token")
		return 2
	}
	body, code := apiCall(stderr, "cluster status", "GET", *url, "/api/v1/cluster", *token, nil, nil)
	if code != 0 {
		return code
	}
	if *asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var st mesh.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "ccmesh cluster status: bad answer: %v\n", err)
		return 1
	}
	if !st.Enabled {
		fmt.Fprintf(stdout, "node %s is not in a cluster\n", st.Node)
		return 0
	}
	fmt.Fprintf(stdout, "cluster %s, seen from %s; NATS connected=%v embedded=%v route connections=%d; directory in sync=%v, agents moved=%d\n",
		st.Name, st.Node, st.NATS.Connected, st.NATS.Embedded, st.NATS.Routes, st.Directory.InSync, st.Directory.Moved)
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHEALTH\tLAST SEEN\tAGENTS OWNED\tFEED SEQ\tDOWNS\tSENT\tREFRAINED\t")
	for _, m := range st.Members {
		seq, seen := fmt.Sprint(m.FeedSeq), fmt.Sprintf("%d ms ago", m.LastSeenMillis)
		switch {
		case m.Self:
			seq, seen = "-", "-"
		case m.LastSeenMillis < 0:
			seen = "never"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t\n", m.ID, m.Health, seen, m.Agents, seq, m.Downs, m.RequestsSent, m.RequestsRefrained)
	}
	_ = tw.Flush()
	if len(st.Outbox.Moves) > 0 || st.Outbox.Config != nil {
		fmt.Fprintf(stdout, "kept for the quorum (written after the heal): %d agent moves", len(st.Outbox.Moves))
		if c := st.Outbox.Config; c != nil {
			fmt.Fprintf(stdout, ", a configuration push based on revision %d", c.BasedOn)
		}
		fmt.Fprintln(stdout)
	}
	return 0
}

// apiCall sends one request to a node's API with a bearer token and returns
// the body of a 2xx answer; otherwise it prints the error as cmd and returns
// the exit code (1: failed, 2: bad arguments).
func apiCall(stderr io.Writer, cmd, method, base, path, token string, body io.Reader, headers map[string]string) ([]byte, int) {
	req, err := http.NewRequest(method, strings.TrimSuffix(base, "/")+path, body)
	if err != nil {
		fmt.Fprintf(stderr, "ccmesh %s: --url: %v\n", cmd, err)
		return nil, 2
	}
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ccmesh %s: %v\n", cmd, err)
		return nil, 1
	}
	defer res.Body.Close()
	out, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil || res.StatusCode/100 != 2 {
		fmt.Fprintf(stderr, "ccmesh %s: HTTP %d: %s%v\n", cmd, res.StatusCode, strings.TrimSpace(string(out)), errText(err))
		return nil, 1
	}
	return out, 0
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}
