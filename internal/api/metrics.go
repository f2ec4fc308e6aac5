package api

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests *prometheus.CounterVec
	created  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, s *Server) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccmesh_http_requests_total", Help: "HTTP requests by method and status code.",
		}, []string{"method", "code"}),
		created: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ccmesh_interactions_created_total", Help: "Interactions created through the API, by queue and channel.",
		}, []string{"queue", "channel"}),
	}
	reg.MustRegister(m.requests, m.created, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &stateCollector{s: s})
	return m
}

// stateCollector reads live figures at scrape time: queues, agents and the event log.
type stateCollector struct{ s *Server }

var (
	descWaiting     = prometheus.NewDesc("ccmesh_queue_waiting", "Interactions waiting in the queue.", []string{"queue"}, nil)
	descLongest     = prometheus.NewDesc("ccmesh_queue_longest_wait_seconds", "Wait of the oldest waiting interaction.", []string{"queue"}, nil)
	descReady       = prometheus.NewDesc("ccmesh_queue_agents_ready", "Eligible agents ready with free capacity.", []string{"queue"}, nil)
	descOffered     = prometheus.NewDesc("ccmesh_queue_offered_total", "Interactions offered to agents.", []string{"queue"}, nil)
	descAnswered    = prometheus.NewDesc("ccmesh_queue_answered_total", "Interactions answered.", []string{"queue"}, nil)
	descAbandoned   = prometheus.NewDesc("ccmesh_queue_abandoned_total", "Interactions abandoned.", []string{"queue"}, nil)
	descSL          = prometheus.NewDesc("ccmesh_queue_service_level_ratio", "Answered within threshold over answered, abandoned after threshold and timed out.", []string{"queue"}, nil)
	descAgents      = prometheus.NewDesc("ccmesh_agents", "Agents by state.", []string{"state"}, nil)
	descSeq         = prometheus.NewDesc("ccmesh_events_last_seq", "Sequence number of the newest event.", nil, nil)
	descDurable     = prometheus.NewDesc("ccmesh_events_durable_seq", "Sequence number of the newest event committed to storage.", nil, nil)
	descLiveInterax = prometheus.NewDesc("ccmesh_interactions_live", "Interactions not yet ended.", nil, nil)
	descBindings    = prometheus.NewDesc("ccmesh_sip_registrations", "Registered contacts of agents' phones.", nil, nil)
	descChallenges  = prometheus.NewDesc("ccmesh_sip_auth_challenges_total", "Digest challenges sent (401).", nil, nil)
	descAuthFail    = prometheus.NewDesc("ccmesh_sip_auth_failures_total", "REGISTER requests with wrong credentials or replayed nonces.", nil, nil)
	descCallsActive = prometheus.NewDesc("ccmesh_sip_calls_active", "Calls in progress.", nil, nil)
	descCalls       = prometheus.NewDesc("ccmesh_sip_calls_total", "Call events since start: started, bridged (an agent leg bridged), overloaded (refused 503), hold, transfer, media_timeout, handed_over (a peer queue took the call), handover_failed, handover_refrained (peer down: nothing sent).", []string{"event"}, nil)
	descPeerUp      = prometheus.NewDesc("ccmesh_cluster_peer_state", "A peer's health as this node sees it: 1 up, 0.5 suspect, 0 down.", []string{"peer"}, nil)
	descPeerDowns   = prometheus.NewDesc("ccmesh_cluster_peer_downs_total", "Times the peer went down (silent past cluster.peer_timeout).", []string{"peer"}, nil)
	descPeerReqs    = prometheus.NewDesc("ccmesh_cluster_peer_requests_total", "Requests to a peer: sent, or refrained (not sent: it was down or had just missed one).", []string{"peer", "outcome"}, nil)
	descCommits     = prometheus.NewDesc("ccmesh_store_commits_total", "Transactions (batches of events) the store writer committed.", nil, nil)
	descWritten     = prometheus.NewDesc("ccmesh_store_events_written_total", "Events the store writer committed.", nil, nil)
	descProjected   = prometheus.NewDesc("ccmesh_store_projection_writes_total", "Projection statements the store writer ran: upserts of interactions and agents' last states, upserts and deletes of open leases.", nil, nil)
	descBlocked     = prometheus.NewDesc("ccmesh_sip_blocked_requests_total", "REGISTER requests refused because their source failed authentication too often.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWaiting, descLongest, descReady, descOffered, descAnswered, descAbandoned, descSL, descAgents, descSeq, descDurable, descCommits, descWritten, descProjected, descLiveInterax, descBindings, descChallenges, descAuthFail, descBlocked, descCallsActive, descCalls, descPeerUp, descPeerDowns, descPeerReqs} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, q := range c.s.p.Router.AllStats() {
		id := string(q.Queue)
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(q.Waiting), id)
		ch <- prometheus.MustNewConstMetric(descLongest, prometheus.GaugeValue, float64(q.LongestWaitMillis)/1000, id)
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, float64(q.AgentsReady), id)
		ch <- prometheus.MustNewConstMetric(descOffered, prometheus.CounterValue, float64(q.Offered), id)
		ch <- prometheus.MustNewConstMetric(descAnswered, prometheus.CounterValue, float64(q.Answered), id)
		ch <- prometheus.MustNewConstMetric(descAbandoned, prometheus.CounterValue, float64(q.Abandoned), id)
		if q.ServiceLevelPercent >= 0 {
			ch <- prometheus.MustNewConstMetric(descSL, prometheus.GaugeValue, q.ServiceLevelPercent/100, id)
		}
	}
	counts := map[string]int{"logged_out": 0, "not_ready": 0, "ready": 0, "reserved": 0, "busy": 0, "wrap_up": 0}
	for _, v := range c.s.p.Agents.Snapshots() {
		counts[v.State.State]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(n), st)
	}
	ch <- prometheus.MustNewConstMetric(descSeq, prometheus.GaugeValue, float64(c.s.p.Log.LastSeq()))
	ch <- prometheus.MustNewConstMetric(descDurable, prometheus.GaugeValue, float64(c.s.p.Log.DurableSeq()))
	if st := c.s.p.Store; st != nil {
		w := st.WriterStats()
		ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(w.Commits))
		ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(w.Events))
		ch <- prometheus.MustNewConstMetric(descProjected, prometheus.CounterValue, float64(w.Projections))
	}
	ch <- prometheus.MustNewConstMetric(descLiveInterax, prometheus.GaugeValue, float64(c.s.p.Interactions.Live()))
	if r := c.s.p.Registrations; r != nil {
		st := r.Stats()
		ch <- prometheus.MustNewConstMetric(descBindings, prometheus.GaugeValue, float64(st.Bindings))
		ch <- prometheus.MustNewConstMetric(descChallenges, prometheus.CounterValue, float64(st.Challenges))
		ch <- prometheus.MustNewConstMetric(descAuthFail, prometheus.CounterValue, float64(st.AuthFailures))
		ch <- prometheus.MustNewConstMetric(descBlocked, prometheus.CounterValue, float64(st.BlockedRequests))
	}
	if calls := c.s.p.Calls; calls != nil {
		st := calls.CallStats()
		ch <- prometheus.MustNewConstMetric(descCallsActive, prometheus.GaugeValue, float64(st.Active))
		for ev, n := range map[string]uint64{"started": st.Started, "bridged": st.Bridged, "overloaded": st.Overloaded,
			"hold": st.Holds, "transfer": st.Transfers, "media_timeout": st.MediaTimeouts,
			"handed_over": st.HandedOver, "handover_failed": st.HandoverFailed, "handover_refrained": st.HandoverRefrained} {
			ch <- prometheus.MustNewConstMetric(descCalls, prometheus.CounterValue, float64(n), ev)
		}
	}
	if cl := c.s.p.Cluster; cl != nil {
		for _, m := range cl.Status().Members {
			if m.Self {
				continue
			}
			id := string(m.ID)
			ch <- prometheus.MustNewConstMetric(descPeerUp, prometheus.GaugeValue, map[string]float64{"up": 1, "suspect": 0.5}[m.Health], id)
			ch <- prometheus.MustNewConstMetric(descPeerDowns, prometheus.CounterValue, float64(m.Downs), id)
			ch <- prometheus.MustNewConstMetric(descPeerReqs, prometheus.CounterValue, float64(m.RequestsSent), id, "sent")
			ch <- prometheus.MustNewConstMetric(descPeerReqs, prometheus.CounterValue, float64(m.RequestsRefrained), id, "refrained")
		}
	}
}
