package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ccmesh/ccmesh/internal/core"
)

// The shared part of a configuration survives YAML (it travels as YAML
// through the cluster and into the last-known-good file) unchanged.
func TestSharedRoundTrip(t *testing.T) {
	c := Default()
	data, err := yaml.Marshal(c.Shared())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseShared(data)
	if err != nil {
		t.Fatalf("parse %s: %v", data, err)
	}
	got, err := c.WithShared(s)
	if err != nil {
		t.Fatal(err)
	}
	again, err := yaml.Marshal(got.Shared())
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(data) || len(got.Agents) != len(c.Agents) || !reflect.DeepEqual(got.Agents[3].Skills, c.Agents[3].Skills) {
		t.Fatalf("round trip changed the shared configuration:\n%s\n%s", data, again)
	}
}

func TestSharedIsStrictAndValidated(t *testing.T) {
	c := Default()
	if _, err := ParseShared([]byte("agents: []\nqueus: []\n")); err == nil || !strings.Contains(err.Error(), `unknown key "queus"`) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := ParseShared([]byte("")); err == nil {
		t.Fatal("empty document accepted")
	}
	if _, err := ParseShared([]byte("node: {id: x}\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("a node section in the shared configuration: %v", err)
	}
	s := c.Shared()
	s.Agents = append(s.Agents, s.Agents[0])
	_, err := c.WithShared(s)
	var ve *ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "agents[10].id") {
		t.Fatalf("duplicate agent: %v", err)
	}
	// A queue's skill nobody holds is caught like in the file, and c is untouched.
	s = c.Shared()
	s.Queues = append([]Queue(nil), s.Queues...)
	s.Queues[0].Skills = map[core.SkillName]int{"klingon": 3}
	if _, err := c.WithShared(s); err == nil || !strings.Contains(err.Error(), "klingon") {
		t.Fatalf("unheld skill: %v", err)
	}
	if _, ok := c.Queues[0].Skills["klingon"]; ok {
		t.Fatal("WithShared changed its receiver")
	}
}
