package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads the YAML file at path and returns its configuration, with defaults
// applied and validated. Errors name the path; validation failures wrap a
// *ValidationError (use errors.As).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes one YAML document strictly (unknown keys are errors that name
// the line and the key), applies the defaults, and validates the result. An
// empty input or one with several documents is an error. A validation failure
// is returned as a *ValidationError.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := decodeStrict(data, &c, "node, http, agents, queues, ..."); err != nil {
		return nil, err
	}
	ApplyDefaults(&c)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeStrict decodes exactly one YAML mapping into out, unknown keys being
// errors; keys names what the mapping may hold, for the error message.
func decodeStrict(data []byte, out any, keys string) error {
	// First pass: structure only, to reject empty input and extra documents.
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty configuration")
		}
		return yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return yamlError(err)
		}
		return fmt.Errorf("line %d: only one YAML document is allowed", extra.Line)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		if len(doc.Content) == 1 && doc.Content[0].ShortTag() == "!!null" {
			return errors.New("empty configuration")
		}
		return fmt.Errorf("line %d: the configuration must be a mapping of keys (%s)", doc.Line, keys)
	}
	// Second pass: strict decoding into the structs.
	dec = yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		return yamlError(err)
	}
	return nil
}

var unknownFieldRE = regexp.MustCompile(`^line (\d+): field (.+) not found in type config\.(\w+)$`)

// sectionNames maps struct type names to where they sit in the file.
var sectionNames = map[string]string{
	"Config":        "the top level",
	"Shared":        "the top level (agents, queues)",
	"NodeConfig":    "node",
	"HTTPConfig":    "http",
	"RoutingConfig": "routing",
	"APIToken":      "an api_tokens entry",
	"Agent":         "an agent",
	"Queue":         "a queue",
	"ServiceLevel":  "service_level",
	"OverflowStep":  "an overflow step",
	"BusinessHours": "business_hours",
	"OpenWindow":    "a business_hours.open window",
	"ClusterConfig": "cluster",
	"Resource":      "a cluster.resources entry",
	"QueueSounds":   "sounds",
}

// yamlError rewrites yaml.v3 errors into messages for operators: one line per
// problem, each starting with the line number; unknown keys read
// `line 7: unknown key "pasword" in an agent`.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("invalid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if g := unknownFieldRE.FindStringSubmatch(m); g != nil {
			where := sectionNames[g[3]]
			if where == "" {
				where = g[3]
			}
			m = fmt.Sprintf("line %s: unknown key %q in %s", g[1], g[2], where)
		}
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "\n"))
}
