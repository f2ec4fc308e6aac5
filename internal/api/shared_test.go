package api_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// doIfMatch is do with an If-Match header.
func (n *testNode) doIfMatch(method, path string, a auth, body string, ifMatch string) (int, []byte) {
	n.t.Helper()
	req, err := http.NewRequest(method, n.base+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("If-Match", ifMatch)
	a(req)
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp.StatusCode, data
}

// The shared configuration through the API of a node alone: admins only (it
// holds passwords), validated with the field named, conditional on a
// revision (0: never changed), bounded, and in force at once.
func TestSharedConfigurationEndpoints(t *testing.T) {
	n := startNode(t, nil)
	n.wantError("GET", "/api/v1/config/shared", n.supervisor(), nil, http.StatusForbidden, "forbidden")
	st, hdr, data := n.do("GET", "/api/v1/config/shared", n.admin(), nil)
	cur := decodeJSON[struct {
		Revision uint64 `json:"revision"`
		Source   string `json:"source"`
		YAML     string `json:"yaml"`
	}](t, data)
	if st != 200 || cur.Revision != 0 || cur.Source != "file" || hdr.Get("ETag") != `"0"` || !strings.Contains(cur.YAML, "password: ann-pass") {
		t.Fatalf("GET: %d %v %+v", st, hdr, cur)
	}
	if st, hdr, body := n.do("GET", "/api/v1/config/shared?format=yaml", n.admin(), nil); st != 200 || hdr.Get("Content-Type") != "application/yaml" || string(body) != cur.YAML {
		t.Fatalf("GET as YAML: %d %v", st, hdr)
	}
	n.wantError("PUT", "/api/v1/config/shared", n.supervisor(), cur.YAML, http.StatusForbidden, "forbidden")
	n.wantError("PUT", "/api/v1/config/shared", n.admin(), "agents: []\nqueues: []\nextra: 1\n", http.StatusUnprocessableEntity, "invalid_config")
	e := n.wantError("PUT", "/api/v1/config/shared", n.admin(), strings.Replace(cur.YAML, "sales: 3", "klingon: 3", 1), http.StatusUnprocessableEntity, "invalid_config")
	if !strings.Contains(e.Error.Message, "klingon") {
		t.Fatalf("the invalid field is not named: %s", e.Error.Message)
	}
	n.wantError("PUT", "/api/v1/config/shared", n.admin(), strings.Repeat("#", 800<<10), http.StatusRequestEntityTooLarge, "too_large")
	if st, body := n.doIfMatch("PUT", "/api/v1/config/shared", n.admin(), cur.YAML, "twelve"); st != 400 {
		t.Fatalf("bad If-Match: %d %s", st, body)
	}
	// Add a queue; conditional on revision 0.
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(cur.YAML), &doc); err != nil {
		t.Fatal(err)
	}
	doc["queues"] = append(doc["queues"].([]any), map[string]any{"id": "vip", "dn": "2099", "skills": map[string]any{"sales": 1}})
	next, _ := yaml.Marshal(doc)
	st, body := n.doIfMatch("PUT", "/api/v1/config/shared", n.admin(), string(next), `"0"`)
	res := decodeJSON[struct {
		Revision    uint64 `json:"revision"`
		AppliedHere bool   `json:"applied_here"`
	}](t, body)
	if st != 200 || res.Revision != 1 || !res.AppliedHere {
		t.Fatalf("PUT: %d %s", st, body)
	}
	n.call("GET", "/api/v1/queues/vip", n.admin(), nil, 200)
	// Another change based on revision 0 is refused: it would lose the first.
	if st, body := n.doIfMatch("PUT", "/api/v1/config/shared", n.admin(), cur.YAML, `"0"`); st != http.StatusPreconditionFailed || !strings.Contains(string(body), "revision_changed") {
		t.Fatalf("stale If-Match: %d %s", st, body)
	}
	n.call("GET", "/api/v1/queues/vip", n.admin(), nil, 200)
}
