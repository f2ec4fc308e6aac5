// Package config defines the ccmesh configuration: its structs, its defaults, the
// strict YAML loader (unknown keys are errors) and Validate, whose messages name the
// field and the bad value, e.g. `agents[3].skills.french: level 12 out of range 0..10`.
package config

import (
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// Config is the whole configuration of one node.
type Config struct {
	// Node identifies this node and where it keeps its data.
	Node NodeConfig `yaml:"node" json:"node"`
	// HTTP is the REST API, event stream, health and metrics listener.
	HTTP HTTPConfig `yaml:"http" json:"http"`
	// SIP is the SIP edge: listeners, digest authentication, registrations.
	SIP SIPConfig `yaml:"sip" json:"sip"`
	// Routing holds node-wide routing policy.
	Routing RoutingConfig `yaml:"routing" json:"routing"`
	// APITokens are bearer tokens for integrators, supervisors and admins.
	APITokens []APIToken `yaml:"api_tokens" json:"-"`
	// Agents are the agents: alone, all owned by this node; in a cluster, every
	// agent of the cluster (the same list on every member), each owned by one member.
	Agents []Agent `yaml:"agents" json:"agents"`
	// Queues are the queues this node hosts.
	Queues []Queue `yaml:"queues" json:"queues"`
	// Cluster makes the node a member of a cluster over NATS (off without members).
	Cluster ClusterConfig `yaml:"cluster" json:"cluster"`
}

// NodeConfig identifies this node.
type NodeConfig struct {
	// ID is the node id, unique in the cluster: [a-z0-9-], 1..64 chars.
	ID core.NodeID `yaml:"id" json:"id"`
	// DataDir holds the SQLite database and other durable files.
	DataDir string `yaml:"data_dir" json:"data_dir"`
	// DrainTimeout bounds how long a SIGTERM waits for in-progress interactions.
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout"`
}

// HTTPConfig is the HTTP listener.
type HTTPConfig struct {
	// Listen is host:port, e.g. 127.0.0.1:8080. Port 0 picks a free port.
	Listen string `yaml:"listen" json:"listen"`
}

// MissedOfferAction says what happens to an agent who lets an offer expire or rejects it.
type MissedOfferAction string

// Missed-offer actions.
const (
	// MissedOfferNotReady sets the agent not-ready with reason "missed offer".
	MissedOfferNotReady MissedOfferAction = "not_ready"
	// MissedOfferReady leaves the agent ready.
	MissedOfferReady MissedOfferAction = "ready"
)

// RoutingConfig is node-wide routing policy.
type RoutingConfig struct {
	// MissedOffer is the action after a missed or rejected offer (default not_ready).
	MissedOffer MissedOfferAction `yaml:"missed_offer" json:"missed_offer"`
	// MaxWaiting bounds the interactions waiting in all queues of the node; past it
	// new interactions are refused as busy (backpressure). Default 100000.
	MaxWaiting int `yaml:"max_waiting" json:"max_waiting"`
	// DecisionCandidates is how many candidates a routing decision ranks, tries and records (default 10).
	DecisionCandidates int `yaml:"decision_candidates" json:"decision_candidates"`
}

// Role is what an API token may do.
type Role string

// API roles, from least to most powerful.
const (
	// RoleSupervisor reads everything and changes agents' states.
	RoleSupervisor Role = "supervisor"
	// RoleAdmin does everything a supervisor does, plus administration.
	RoleAdmin Role = "admin"
	// RoleIntegrator creates and reads interactions and reads the event stream.
	RoleIntegrator Role = "integrator"
)

// APIToken is one bearer token.
type APIToken struct {
	// Name labels the token in logs (never the secret itself).
	Name string `yaml:"name" json:"name"`
	// Token is the secret, at least 16 characters.
	Token string `yaml:"token" json:"-"`
	// Role is supervisor, admin or integrator.
	Role Role `yaml:"role" json:"role"`
}

// Agent is one agent owned by this node.
type Agent struct {
	// ID is the agent's login id: [a-z0-9._-], 1..64 chars.
	ID core.AgentID `yaml:"id" json:"id"`
	// Name is the display name.
	Name string `yaml:"name" json:"name"`
	// DN is the agent's directory number (digits, 2..15), unique across agents and queues.
	DN core.DN `yaml:"dn" json:"dn"`
	// Password is the agent's credential for the API and for SIP digest
	// authentication of its phones.
	Password string `yaml:"password" json:"-"`
	// Skills maps skill name to level 0..10.
	Skills map[core.SkillName]int `yaml:"skills" json:"skills"`
	// Capacity maps channel to how many interactions of it the agent handles at once.
	// Missing channels take the defaults (voice 1, chat 3, callback 1, task 1); 0 disables a channel.
	Capacity map[core.Channel]int `yaml:"capacity" json:"capacity"`
	// IMProtocols lists the IM protocols the agent can handle (xmpp, sip, webchat).
	IMProtocols []core.IMProtocol `yaml:"im_protocols" json:"im_protocols"`
	// Home is the node that owns the agent in a cluster; empty lets every node
	// compute the same owner from cluster.members.
	Home core.NodeID `yaml:"home" json:"home,omitempty"`
}

// Strategy picks one agent among the eligible ones.
type Strategy string

// Routing strategies.
const (
	// StrategyLongestIdle picks the agent idle the longest on the channel.
	StrategyLongestIdle Strategy = "longest-idle"
	// StrategyMostSkilled picks the highest sum of levels on the required skills.
	StrategyMostSkilled Strategy = "most-skilled"
	// StrategyRoundRobin picks the next eligible agent after the last one chosen.
	StrategyRoundRobin Strategy = "round-robin"
	// StrategyLeastOccupied picks the agent with the lowest occupancy on the channel.
	StrategyLeastOccupied Strategy = "least-occupied"
)

// Strategies lists every strategy.
var Strategies = []Strategy{StrategyLongestIdle, StrategyMostSkilled, StrategyRoundRobin, StrategyLeastOccupied}

// Queue is one queue hosted by this node.
type Queue struct {
	// ID is the queue id: [a-z0-9._-], 1..64 chars.
	ID core.QueueID `yaml:"id" json:"id"`
	// Name is the display name.
	Name string `yaml:"name" json:"name"`
	// DN is the route point's directory number, unique across agents and queues.
	DN core.DN `yaml:"dn" json:"dn"`
	// Address is an optional SIP address of the route point, e.g. sip:sales@example.com.
	Address string `yaml:"address" json:"address,omitempty"`
	// Skills maps each required skill to its minimum level 0..10.
	Skills map[core.SkillName]int `yaml:"skills" json:"skills"`
	// Priority is the base priority of the queue's interactions, 0..100 (higher first).
	Priority int `yaml:"priority" json:"priority"`
	// Strategy is the agent-selection strategy (default longest-idle).
	Strategy Strategy `yaml:"strategy" json:"strategy"`
	// MaxWait bounds the time an interaction waits; past it the interaction leaves
	// the queue as timed out. 0 means no limit.
	MaxWait Duration `yaml:"max_wait" json:"max_wait"`
	// ServiceLevel is the target used in the queue's statistics.
	ServiceLevel ServiceLevel `yaml:"service_level" json:"service_level"`
	// Overflow steps apply in order as an interaction's wait grows.
	Overflow []OverflowStep `yaml:"overflow" json:"overflow,omitempty"`
	// WrapUp is the agent's after-interaction work time (default 10s when absent;
	// "0s" means no wrap-up). Read it with WrapUpTime.
	WrapUp *Duration `yaml:"wrap_up" json:"wrap_up"`
	// OfferTimeout is how long an offer waits for the agent (default 20s).
	OfferTimeout Duration `yaml:"offer_timeout" json:"offer_timeout"`
	// BusinessHours, when set, close the queue outside its hours.
	BusinessHours *BusinessHours `yaml:"business_hours" json:"business_hours,omitempty"`
	// Sounds are what a caller hears on a call to this queue (WAV files, 8 kHz mono:
	// 16-bit PCM, µ-law or A-law). Empty paths use the generated defaults.
	Sounds QueueSounds `yaml:"sounds" json:"sounds"`
	// ClosedTarget, when set, takes this queue's new interactions while it is closed
	// (business hours) and the target is open; otherwise callers hear the closed
	// announcement and get 480, and API clients get 409 queue_closed.
	ClosedTarget core.QueueID `yaml:"closed_target" json:"closed_target,omitempty"`
	// AnswerMode is how a call waits: early_media (default: 183 with the node's
	// SDP, the call is not answered until an agent takes it) or answer (200 at
	// once, then the announcement and music: for trunks that drop early media).
	AnswerMode AnswerMode `yaml:"answer_mode" json:"answer_mode"`
	// Media is where a call's RTP flows: anchored (default: through the node, which
	// plays announcements and music and relays the conversation) or direct
	// (signalling only: the caller's SDP goes to the agent and the agent's back;
	// callers wait hearing ringing, and hold music and transfers are not offered).
	Media MediaMode `yaml:"media" json:"media"`
}

// MediaMode is where a queue's call media flows.
type MediaMode string

// Media modes.
const (
	MediaAnchored MediaMode = "anchored"
	MediaDirect   MediaMode = "direct"
)

// AnswerMode is how a voice call waits in a queue.
type AnswerMode string

// Answer modes.
const (
	AnswerEarlyMedia AnswerMode = "early_media"
	AnswerFirst      AnswerMode = "answer"
)

// ServiceLevel is "Target percent of interactions answered within Threshold".
type ServiceLevel struct {
	// Threshold is the answer time that counts as within service level (default 20s).
	Threshold Duration `yaml:"threshold" json:"threshold"`
	// TargetPercent is the goal, 0..100 (default 80).
	TargetPercent int `yaml:"target_percent" json:"target_percent"`
}

// OverflowStep widens who may take an interaction once it has waited After.
type OverflowStep struct {
	// After is the wait time at which the step applies (strictly increasing across steps).
	After Duration `yaml:"after" json:"after"`
	// Relax lowers every required minimum level by this many points (0..10, floor 0).
	Relax int `yaml:"relax" json:"relax"`
	// AddQueues makes agents eligible for these queues eligible too.
	AddQueues []core.QueueID `yaml:"add_queues" json:"add_queues,omitempty"`
	// To hands a voice call still waiting to a peer's queue (a resource of kind
	// queue in cluster.resources); the call keeps its place here meanwhile.
	To string `yaml:"to" json:"to,omitempty"`
}

// BusinessHours is a weekly schedule in a time zone, with closed dates.
type BusinessHours struct {
	// TimeZone is an IANA zone name such as Europe/Paris (default UTC).
	TimeZone string `yaml:"timezone" json:"timezone"`
	// Open lists the opening windows.
	Open []OpenWindow `yaml:"open" json:"open"`
	// ClosedDates lists YYYY-MM-DD dates (in TimeZone) when the queue is closed all day.
	ClosedDates []string `yaml:"closed_dates" json:"closed_dates,omitempty"`
}

// OpenWindow is a daily window on some weekdays.
type OpenWindow struct {
	// Days are weekday names: mon tue wed thu fri sat sun.
	Days []string `yaml:"days" json:"days"`
	// From is HH:MM, inclusive.
	From string `yaml:"from" json:"from"`
	// To is HH:MM, exclusive; must be after From.
	To string `yaml:"to" json:"to"`
}

// WrapUpTime returns the queue's wrap-up time (the default when unset).
func (q *Queue) WrapUpTime() time.Duration {
	if q.WrapUp == nil {
		return DefaultWrapUp.D()
	}
	return q.WrapUp.D()
}

// QueueSounds are the WAV files a queue plays to callers.
type QueueSounds struct {
	// Announcement plays once when the call arrives, before the music.
	Announcement string `yaml:"announcement" json:"announcement,omitempty"`
	// Music loops while the call waits (default: generated music on hold).
	Music string `yaml:"music" json:"music,omitempty"`
	// Closed plays once to a call that arrives outside business hours, before 480.
	Closed string `yaml:"closed" json:"closed,omitempty"`
	// From is a peer's media service (a resource of kind media) whose sounds
	// play for the ones not set here.
	From string `yaml:"from" json:"from,omitempty"`
}
