package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/node"
)

// FuzzRequestBodies sends arbitrary bodies to every endpoint that reads JSON, on a
// real node over real HTTP. Whatever the body, the node answers a 2xx or a 4xx/503
// with the API's error shape — never a 500, never a hang, never a crash.
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"queue":"sales"}`, `{"queue":"sales","priority":101}`, `{"channel":"voice","queue":"sales"}`,
		`{"state":"ready"}`, `{"state":"not_ready","reason":"lunch"}`, `{"force":true}`, `{}`, ``, `[]`, `null`,
		`{"queue":"support"}}`, `{"attributes":{"":"x"},"queue":"sales"}`, "\x00\xff", `{"priority":1e309}`,
	} {
		f.Add(uint8(0), seed)
	}
	cfg := config.Default()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.SIP.ListenUDP, cfg.SIP.ListenTCP = "", "" // not under test here
	cfg.Node.DataDir = f.TempDir()
	cfg.Node.DrainTimeout = config.Duration(200 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	n, err := node.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	f.Cleanup(func() { cancel(); <-done })
	base := "http://" + n.HTTPAddr()
	client := &http.Client{Timeout: 10 * time.Second}
	type target struct {
		path       string
		user, pass string
		token      string
	}
	targets := []target{
		{path: "/api/v1/interactions", token: "ccmesh-admin-token-change-me"},
		{path: "/api/v1/agents/ann/state", user: "ann", pass: "ann-pass"},
		{path: "/api/v1/agents/bob/logout", token: "ccmesh-supervisor-token-change-me"},
		{path: "/api/v1/agents/carla/login", user: "carla", pass: "carla-pass"},
	}
	f.Fuzz(func(t *testing.T, which uint8, body string) {
		tg := targets[int(which)%len(targets)]
		req, err := http.NewRequest(http.MethodPost, base+tg.path, bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		if tg.token != "" {
			req.Header.Set("Authorization", "Bearer "+tg.token)
		} else {
			req.SetBasicAuth(tg.user, tg.pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s %q: %v", tg.path, body, err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q: %d %s", tg.path, body, resp.StatusCode, data)
		}
		if resp.StatusCode >= 400 {
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if json.Unmarshal(data, &e) != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("POST %s %q: %d without the error shape: %s", tg.path, body, resp.StatusCode, data)
			}
		}
	})
}
