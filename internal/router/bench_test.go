package router

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// scale builds nAgents agents with 10 random skills each out of nQueues, and
// nQueues queues each requiring one skill: about nAgents*10/nQueues eligible per queue.
func scale(nAgents, nQueues int, strategy config.Strategy) ([]config.Agent, []config.Queue) {
	rng := rand.New(rand.NewSource(1))
	agents := make([]config.Agent, nAgents)
	for i := range agents {
		skills := map[core.SkillName]int{}
		for len(skills) < 10 {
			skills[core.SkillName(fmt.Sprintf("s%d", rng.Intn(nQueues)))] = 1 + rng.Intn(10)
		}
		agents[i] = config.Agent{ID: core.AgentID(fmt.Sprintf("agent-%05d", i)), Skills: skills,
			Capacity: map[core.Channel]int{core.ChannelVoice: 1, core.ChannelChat: 3, core.ChannelCallback: 1, core.ChannelTask: 1}}
	}
	queues := make([]config.Queue, nQueues)
	for i := range queues {
		queues[i] = config.Queue{ID: core.QueueID(fmt.Sprintf("q%d", i)), Strategy: strategy,
			Skills: map[core.SkillName]int{core.SkillName(fmt.Sprintf("s%d", i)): 1}, OfferTimeout: config.Duration(20 * time.Second)}
	}
	return agents, queues
}

// BenchmarkRouteAndReserve measures one routing decision plus the reservation at
// the owner (10,000 agents, 1,000 queues), with the router's feed running as in a
// node. Each granted lease is released right after, off the measured path.
func BenchmarkRouteAndReserve(b *testing.B) {
	for _, strategy := range config.Strategies {
		b.Run(string(strategy), func(b *testing.B) { benchRoute(b, strategy) })
	}
}

func benchRoute(b *testing.B, strategy config.Strategy) {
	agents, queues := scale(10000, 1000, strategy)
	log := events.NewLog(0, 1<<16, false)
	clk := clock.Real{}
	m := agent.NewManager(agent.Params{Node: "n1", Agents: agents, Clock: clk, Log: log, MissedOffer: config.MissedOfferNotReady, Epoch: 1})
	rec := &grabber{}
	r, err := New(Params{Queues: queues, Agents: agents, Reserver: m, Offerer: rec, Log: log, Clock: clk})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx, 0); close(done) }()
	defer func() { cancel(); <-done }()
	for _, a := range agents {
		_ = m.Login(a.ID)
		_ = m.SetReady(a.ID)
	}
	for log.LastSeq() > r.fedSeq() {
		runtime.Gosched()
	}
	rng := rand.New(rand.NewSource(2))
	lat := make([]time.Duration, 0, min(b.N, 1<<20))
	chans := []core.Channel{core.ChannelTask, core.ChannelChat, core.ChannelVoice}
	b.ReportAllocs()
	b.ResetTimer()
	granted := 0
	for i := 0; i < b.N; i++ {
		q := queues[rng.Intn(len(queues))].ID
		w := Waiting{ID: core.InteractionID(fmt.Sprintf("ix-%d", i)), Queue: q, Channel: chans[i%3]}
		start := time.Now()
		if err := r.Enqueue(w); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		if len(lat) < cap(lat) {
			lat = append(lat, el)
		}
		if rec.ok {
			granted++
			rec.ok = false
			_ = m.Release(rec.o.Grant.Token)
		} else {
			r.Remove(w.ID)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
	}
	b.ReportMetric(100*float64(granted)/float64(b.N), "%granted")
}

type grabber struct {
	ok bool
	o  Offer
}

func (g *grabber) Offer(o Offer) OfferResult { g.ok, g.o = true, o; return OfferTaken }

func (r *Router) fedSeq() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.feedSeq
}

// TestMemoryPerIdleAgent reports the owner-side plus router-side memory of a
// logged-in, ready, idle agent (10,000 agents, 1,000 queues). Run with -v to see it.
func TestMemoryPerIdleAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("memory measurement is slow")
	}
	agents, queues := scale(10000, 1000, config.StrategyLongestIdle)
	log := events.NewLog(0, 1<<10, false)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := agent.NewManager(agent.Params{Node: "n1", Agents: agents, Clock: clock.Real{}, Log: log, MissedOffer: config.MissedOfferNotReady, Epoch: 1})
	r, err := New(Params{Queues: queues, Agents: agents, Reserver: m, Offerer: &grabber{}, Log: log, Clock: clock.Real{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		_ = m.Login(a.ID)
		_ = m.SetReady(a.ID)
	}
	evs, _, _ := log.Read(log.LastSeq()-1, 1, nil)
	_ = evs
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(len(agents))
	t.Logf("memory per idle logged-in agent (manager + router view + queue indexes): %.0f bytes", per)
	if per > 4096 {
		t.Errorf("%.0f bytes per idle agent, goal ≤ 4096", per)
	}
	runtime.KeepAlive(m)
	runtime.KeepAlive(r)
}
