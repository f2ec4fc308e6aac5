package config

import (
	"errors"
	"fmt"

	"gopkg.in/yaml.v3"
)

// Shared is the part of the configuration a cluster replicates (ADR 0007): the
// agents and the queues. The rest (node, listeners, cluster, tokens) belongs
// to each node's own file.
type Shared struct {
	Agents []Agent `yaml:"agents" json:"agents"`
	Queues []Queue `yaml:"queues" json:"queues"`
}

// ParseShared decodes a shared configuration document strictly (unknown keys
// are errors naming the line). It does not validate: WithShared does, against
// the node's own configuration.
func ParseShared(data []byte) (Shared, error) {
	var s Shared
	if err := decodeStrict(data, &s, "agents, queues"); err != nil {
		return Shared{}, err
	}
	return s, nil
}

// WithShared returns a copy of c whose agents and queues are s's, with the
// defaults applied and the whole validated (a *ValidationError names each
// field at fault). c is not changed.
func (c *Config) WithShared(s Shared) (*Config, error) {
	out := *c
	// A YAML round trip copies the sections deeply: nothing of s or c is
	// shared with the result.
	data, err := yaml.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("config: copy the shared configuration: %w", err)
	}
	var cp Shared
	if err := yaml.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("config: copy the shared configuration: %w", err)
	}
	out.Agents, out.Queues = cp.Agents, cp.Queues
	ApplyDefaults(&out)
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return &out, nil
}

// Shared returns c's agents and queues.
func (c *Config) Shared() Shared {
	return Shared{Agents: c.Agents, Queues: c.Queues}
}

// ErrInvalid marks a configuration refused by parsing or validation (the
// wrapped error says why).
var ErrInvalid = errors.New("invalid configuration")
