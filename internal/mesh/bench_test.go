package mesh

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
)

// BenchmarkCrossNodeReserve measures one reservation of an agent owned by
// another member (n1 → n2 over the NATS routes, in one process) and its
// release, reporting the latency percentiles of the reserve request.
//
//	go test -run '^$' -bench CrossNodeReserve -benchtime 20000x ./internal/mesh/
func BenchmarkCrossNodeReserve(b *testing.B) {
	agents := []config.Agent{taskAgent("ann", "n2", 1)}
	nodes := startClusterB(b, agents)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	if err := n2.agents.Login("ann"); err != nil {
		b.Fatal(err)
	}
	if err := n2.agents.SetReady("ann"); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		g, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "ann", Interaction: core.InteractionID(fmt.Sprint("ix-", i)), Channel: core.ChannelTask, TTL: time.Minute})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if err := n1.mesh.Release(g.Token); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkClusterReservations measures reservations per second when 1, 2 or 3
// members reserve and release at once, each its share of 30 agents spread over
// the three owners (so two thirds of each member's reservations are remote).
//
//	go test -run '^$' -bench ClusterReservations -benchtime 30000x ./internal/mesh/
func BenchmarkClusterReservations(b *testing.B) {
	var agents []config.Agent
	for i := range 30 {
		agents = append(agents, taskAgent(fmt.Sprintf("a%02d", i), "", 1000000))
	}
	nodes := startClusterB(b, agents)
	for _, n := range nodes {
		for _, a := range Owned(members, n.id, agents) {
			if err := n.agents.Login(a.ID); err != nil {
				b.Fatal(err)
			}
			if err := n.agents.SetReady(a.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, active := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("nodes=%d", active), func(b *testing.B) {
			var wg sync.WaitGroup
			per := b.N / active
			start := time.Now()
			for k := range active {
				n := nodes[k]
				for w := range 4 { // four requesters per node
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := w; i < per; i += 4 {
							a := agents[(i*7+k)%len(agents)].ID
							g, err := n.mesh.Reserve(agent.ReserveRequest{Agent: a, Interaction: core.InteractionID(fmt.Sprintf("ix-%d-%d", k, i)),
								Channel: core.ChannelTask, TTL: time.Minute})
							if err != nil {
								b.Error(err)
								return
							}
							if err := n.mesh.Release(g.Token); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
			}
			wg.Wait()
			b.ReportMetric(float64(per*active)/time.Since(start).Seconds(), "reservations/s")
		})
	}
}

// BenchmarkAgentMove measures an ownership move: the agent logs in at the
// other member (hand-over RPC, directory read and compare-and-swap on the
// replicated R3 bucket, adoption), alternately at n2 and n1.
//
//	go test -run '^$' -bench AgentMove -benchtime 500x ./internal/mesh/
func BenchmarkAgentMove(b *testing.B) {
	nodes := startClusterB(b, []config.Agent{taskAgent("ann", "n1", 1)})
	for _, n := range nodes {
		for !n.mesh.DirectoryInSync() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		to := n2
		if i%2 == 1 {
			to = n1
		}
		start := time.Now()
		if err := to.mesh.Claim(context.Background(), "ann"); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
