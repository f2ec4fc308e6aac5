package config

import (
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// Default values applied by ApplyDefaults.
const (
	DefaultDrainTimeout       = Duration(30 * time.Second)
	DefaultMaxWaiting         = 100000
	DefaultDecisionCandidates = 10
	DefaultStrategy           = StrategyLongestIdle
	DefaultWrapUp             = Duration(10 * time.Second)
	DefaultOfferTimeout       = Duration(20 * time.Second)
	DefaultSLThreshold        = Duration(20 * time.Second)
	DefaultSLTargetPercent    = 80
	DefaultTimeZone           = "UTC"
)

// DefaultCapacity returns the capacity of an agent on ch when the agent's
// capacity map does not mention ch: voice 1, chat 3, callback 1, task 1, and 0
// for anything that is not a channel.
func DefaultCapacity(ch core.Channel) int {
	switch ch {
	case core.ChannelVoice, core.ChannelCallback, core.ChannelTask:
		return 1
	case core.ChannelChat:
		return 3
	}
	return 0
}

// CapacityFor returns how many interactions of channel ch the agent handles at
// once: the value in Capacity when present (0 disables the channel), else the
// default for ch. It does not modify a.
func (a *Agent) CapacityFor(ch core.Channel) int {
	if v, ok := a.Capacity[ch]; ok {
		return v
	}
	return DefaultCapacity(ch)
}

// ApplyDefaults fills the zero values of c with their defaults, in place. It
// fills each agent's capacity map with every channel, queue and agent names
// with their ids, and an empty business-hours time zone with UTC.
func ApplyDefaults(c *Config) {
	applySIPDefaults(&c.SIP)
	applyClusterDefaults(&c.Cluster)
	if c.Node.DrainTimeout == 0 {
		c.Node.DrainTimeout = DefaultDrainTimeout
	}
	if c.Routing.MissedOffer == "" {
		c.Routing.MissedOffer = MissedOfferNotReady
	}
	if c.Routing.MaxWaiting == 0 {
		c.Routing.MaxWaiting = DefaultMaxWaiting
	}
	if c.Routing.DecisionCandidates == 0 {
		c.Routing.DecisionCandidates = DefaultDecisionCandidates
	}
	for i := range c.Agents {
		a := &c.Agents[i]
		if a.Name == "" {
			a.Name = string(a.ID)
		}
		if a.Capacity == nil {
			a.Capacity = make(map[core.Channel]int, core.NumChannels)
		}
		for _, ch := range core.Channels {
			if _, ok := a.Capacity[ch]; !ok {
				a.Capacity[ch] = DefaultCapacity(ch)
			}
		}
	}
	for i := range c.Queues {
		q := &c.Queues[i]
		if q.Name == "" {
			q.Name = string(q.ID)
		}
		if q.AnswerMode == "" {
			q.AnswerMode = AnswerEarlyMedia
		}
		if q.Media == "" {
			q.Media = MediaAnchored
		}
		if q.Strategy == "" {
			q.Strategy = DefaultStrategy
		}
		if q.WrapUp == nil {
			d := DefaultWrapUp
			q.WrapUp = &d
		}
		if q.OfferTimeout == 0 {
			q.OfferTimeout = DefaultOfferTimeout
		}
		if q.ServiceLevel.Threshold == 0 {
			q.ServiceLevel.Threshold = DefaultSLThreshold
		}
		if q.ServiceLevel.TargetPercent == 0 {
			q.ServiceLevel.TargetPercent = DefaultSLTargetPercent
		}
		if q.BusinessHours != nil && q.BusinessHours.TimeZone == "" {
			q.BusinessHours.TimeZone = DefaultTimeZone
		}
	}
}

// Default returns the sample configuration a newcomer gets from `ccmesh serve`
// without --config: one node on 127.0.0.1:8080, two queues (sales 2001, support
// 2002) and ten agents (ann … jon, DNs 1001..1010, password "<id>-pass"). It is
// the same configuration as examples/single-node.yaml and it passes Validate.
// Its tokens and passwords are public: never expose it beyond localhost.
func Default() *Config {
	agent := func(id, name, dn string, skills map[core.SkillName]int, im ...core.IMProtocol) Agent {
		return Agent{
			ID:          core.AgentID(id),
			Name:        name,
			DN:          core.DN(dn),
			Password:    id + "-pass",
			Skills:      skills,
			IMProtocols: im,
		}
	}
	type sk = map[core.SkillName]int
	c := &Config{
		Node: NodeConfig{
			ID:           "node-1",
			DataDir:      "./ccmesh-data",
			DrainTimeout: Duration(30 * time.Second),
		},
		HTTP: HTTPConfig{Listen: "127.0.0.1:8080"},
		SIP:  SIPConfig{ListenUDP: "127.0.0.1:5060", ListenTCP: "127.0.0.1:5060"},
		Routing: RoutingConfig{
			MissedOffer:        MissedOfferNotReady,
			MaxWaiting:         100000,
			DecisionCandidates: 10,
		},
		APITokens: []APIToken{
			{Name: "admin", Token: "ccmesh-admin-token-change-me", Role: RoleAdmin},
			{Name: "supervisor", Token: "ccmesh-supervisor-token-change-me", Role: RoleSupervisor},
		},
		Agents: []Agent{
			agent("ann", "Ann Smith", "1001", sk{"sales": 8, "english": 9}, core.IMWebChat),
			agent("bob", "Bob Jones", "1002", sk{"sales": 6, "support": 4, "english": 7}, core.IMXMPP, core.IMWebChat),
			agent("carla", "Carla Rossi", "1003", sk{"support": 9, "french": 8, "english": 6}, core.IMSIP),
			agent("dev", "Dev Patel", "1004", sk{"sales": 5, "support": 5}),
			agent("eve", "Eve Martin", "1005", sk{"support": 7, "english": 8}, core.IMWebChat, core.IMSIP),
			agent("farid", "Farid Haddad", "1006", sk{"sales": 7, "french": 9}, core.IMXMPP),
			agent("gina", "Gina Lopez", "1007", sk{"support": 6, "french": 6, "english": 5}, core.IMWebChat),
			agent("hugo", "Hugo Bernard", "1008", sk{"sales": 4, "support": 3}),
			agent("ines", "Ines Costa", "1009", sk{"sales": 9, "french": 7, "english": 8}, core.IMXMPP, core.IMSIP, core.IMWebChat),
			agent("jon", "Jon Berg", "1010", sk{"support": 8, "english": 6}, core.IMSIP),
		},
		Queues: []Queue{
			{
				ID: "sales", Name: "Sales", DN: "2001",
				Skills:       sk{"sales": 3},
				Priority:     10,
				Strategy:     StrategyLongestIdle,
				MaxWait:      Duration(10 * time.Minute),
				ServiceLevel: ServiceLevel{Threshold: Duration(20 * time.Second), TargetPercent: 80},
				Overflow: []OverflowStep{
					{After: Duration(60 * time.Second), Relax: 2},
					{After: Duration(120 * time.Second), AddQueues: []core.QueueID{"support"}},
				},
				WrapUp:       ptr(Duration(10 * time.Second)),
				OfferTimeout: Duration(20 * time.Second),
			},
			{
				ID: "support", Name: "Support", DN: "2002",
				Skills:       sk{"support": 3},
				Priority:     5,
				Strategy:     StrategyMostSkilled,
				MaxWait:      Duration(10 * time.Minute),
				ServiceLevel: ServiceLevel{Threshold: Duration(20 * time.Second), TargetPercent: 80},
				Overflow: []OverflowStep{
					{After: Duration(60 * time.Second), Relax: 2},
					{After: Duration(120 * time.Second), AddQueues: []core.QueueID{"sales"}},
				},
				WrapUp:       ptr(Duration(10 * time.Second)),
				OfferTimeout: Duration(20 * time.Second),
			},
		},
	}
	ApplyDefaults(c)
	return c
}

func ptr[T any](v T) *T { return &v }
