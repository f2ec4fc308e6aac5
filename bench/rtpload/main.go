// Command rtpload measures how many concurrent bridged calls, with RTP flowing
// both ways, one ccmesh node carries, and the packet loss through the node's
// media relay (media anchored at the node: every packet goes caller → node →
// agent or agent → node → caller).
//
//	go run ./bench/rtpload -calls 1000 -rate 50 -hold 30s
//	go run ./bench/rtpload -calls 20 -rate 10 -hold 5s -agents 20
//
// What it does, all on 127.0.0.1:
//
//  1. Has bench/apiload write a node configuration (-gen-config: agents
//     a0001.. with password aNNNN-pass, queue q1 without wrap-up), gives every
//     agent voice capacity 1 and adds a SIP section (-sip-port, sip.max_calls
//     above -calls), builds ./cmd/ccmesh (or takes -node-bin), starts it as a
//     child process and waits for /readyz.
//  2. Starts the agents' phones: one sipgo signalling socket per
//     -phones-per-socket agents; each agent REGISTERs (digest) a Contact with
//     its own user part, and the INVITE handler routes by Request-URI user.
//     The agents log in and get ready through the API, 16 at a time.
//  3. Places -calls calls to q1's route point at -rate calls/s from a few
//     sipgo callers. The node plays music while a call waits, rings a ready
//     agent's phone, which answers at once, bridges the two legs through its
//     relay and answers the caller (200). From then on the caller (after its
//     ACK) and the agent's phone (after its 200) each send 160-byte PCMU RTP
//     every 20 ms from the media socket their SDP advertised (the node latches
//     the first source it sees) to the node's address for their leg.
//  4. Once every call is answered or failed, holds them all for -hold; the
//     first -warmup of it is not measured. Then it waits for packets still in
//     flight and hangs up every call from the caller side (BYE) at -rate.
//  5. Prints one summary: calls attempted / answered / failed, peak concurrent
//     bridged calls, per direction packets sent / received / lost and one-way
//     latency, the node's and its own CPU (as cores) and memory, kernel UDP
//     drops, and a digest of the node's log.
//
// How packets are counted. Every payload starts with a marker: magic "RL",
// the direction ('C' caller→agent, 'A' agent→caller), a phase byte, the
// sender's id (call index, or agent index), a frame number and the send time.
// Packets are attributed by this marker, never by SSRC or sequence number (the
// node rewrites both toward the caller to continue the music's stream); the
// node's music carries no marker and is not counted. A stream counts what it
// sends only once it has heard the other party through the node (so the relay
// is up: the call is bridged), and the sender writes the phase it counted the
// packet in (ramp-up, or the hold window) into the packet, so the receiver
// counts exactly the same packets however late they arrive. Loss in a
// direction is packets sent minus packets received, over all calls; the hold
// window is the figure that matters, ramp-up (while calls are still being set
// up) is shown too. A call is "bridged" once both parties have heard each
// other; the peak of that count is the concurrency reached.
//
// The load generator is cheap per stream: -senders goroutines (default 2)
// send every stream's packets, spread over 2 ms slots; each media socket has
// one receiving goroutine. It runs on the same machine as the node, so its own
// CPU is reported next to the node's; loss in the tool's own sockets would show
// as "socket drops" on the tool's side (its sockets have 1 MiB receive buffers).
//
// Bounds: -timeout (default 2×calls/rate + hold + 60 s, counted once the node
// is ready: placing and hanging up each take calls/rate); at exit the node
// this tool started is stopped (SIGTERM, then SIGKILL, by its PID) unless
// -keep. The work directory (config, node.log, SIP library warnings) is kept
// and printed. RLIMIT_NOFILE is raised to its hard limit at start; the node
// inherits it. Exit status: 0 when every call was answered, the generator
// offered the full load (at least 99% of 50 packets/s per stream in the window:
// on a machine too small for both the node and the generator it cannot, and
// the run then says nothing about the node) and loss was within -max-loss both
// ways in the window; 3 otherwise; 1 on error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/bench/internal/procstat"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

var (
	flagCalls     = flag.Int("calls", 100, "calls to place (all held up at once)")
	flagRate      = flag.Float64("rate", 50, "calls placed per second, and BYEs per second at the end")
	flagHold      = flag.Duration("hold", 30*time.Second, "how long all calls stay up once set up (the window is hold minus warm-up)")
	flagWarmup    = flag.Duration("warmup", time.Second, "start of the hold not measured")
	flagAgents    = flag.Int("agents", 0, "agents (default and minimum: -calls)")
	flagNodeBin   = flag.String("node-bin", "", "ccmesh binary to run (default: go build ./cmd/ccmesh into the work directory)")
	flagKeep      = flag.Bool("keep", false, "leave the node running at exit")
	flagDir       = flag.String("dir", "", "work directory (default: a new one under $TMPDIR)")
	flagSIPPort   = flag.Int("sip-port", 15200, "the node's SIP UDP port on 127.0.0.1")
	flagHTTPPort  = flag.Int("http-port", 18200, "the node's HTTP port on 127.0.0.1")
	flagTimeout   = flag.Duration("timeout", 0, "overall bound once the node is ready (default 2×calls/rate + hold + 60s)")
	flagPerSocket = flag.Int("phones-per-socket", 250, "agents' phones sharing one SIP signalling socket")
	flagCallerUAs = flag.Int("caller-uas", 4, "caller user agents (calls are spread over them)")
	flagSenders   = flag.Int("senders", 2, "RTP sender goroutines")
	flagMaxLoss   = flag.Float64("max-loss", 0.1, "pass mark: loss in % per direction in the hold window")
)

func main() {
	flag.Parse()
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rtpload:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// load is one run's shared state.
type load struct {
	epoch time.Time
	done  chan struct{} // closed when the tool ends: agents' phones let go of their calls

	phase        atomic.Int32 // what senders count new packets as (phaseRamp, phaseWindow, phaseNone)
	lastWindowRx atomic.Int64 // ns since epoch of the last window packet received

	calls      []*callState
	senders    []*sender
	nextSender atomic.Uint64
	mu         sync.Mutex
	streams    []*stream // every stream opened

	latency [nPhases][2]histogram // one-way, by phase and sending direction
	setup   histogram             // INVITE sent → 200 received

	placed, answered, endedByNode, byeOK, byeFailed atomic.Int64
	agentAnswered, agentEnded, agentRefused         atomic.Int64
	bridged, peakBridged                            atomic.Int64

	failMu   sync.Mutex
	failures map[string]int

	// hangupAt is when BYEs start (written before hangup is closed).
	hangup   chan struct{}
	hangupAt time.Time
}

func (l *load) now() time.Duration { return time.Since(l.epoch) }

func (l *load) allStreams(s *stream) {
	l.mu.Lock()
	l.streams = append(l.streams, s)
	l.mu.Unlock()
}

func (l *load) addToSender(s *stream) {
	sh := l.senders[l.nextSender.Add(1)%uint64(len(l.senders))]
	sh.mu.Lock()
	sh.streams = append(sh.streams, s)
	sh.mu.Unlock()
}

func (l *load) fail(reason string) {
	l.failMu.Lock()
	l.failures[reason]++
	l.failMu.Unlock()
}

// callState is one call: the caller's stream and, once it has heard the
// caller, the agent's.
type callState struct {
	idx    int
	caller atomic.Pointer[stream]
	agent  atomic.Pointer[stream]

	mu    sync.Mutex
	sides int  // parties that heard the other
	up    bool // counted in load.bridged
	down  bool // hung up
}

// heard is called once per stream, when it first hears the other party.
func (l *load) heard(s *stream, peer uint32) {
	c := s.call.Load()
	if s.dir == dirAgentToCaller {
		if int(peer) >= len(l.calls) {
			return
		}
		c = l.calls[peer]
		s.call.Store(c)
		c.agent.Store(s)
	}
	if c == nil {
		return
	}
	c.mu.Lock()
	c.sides++
	if c.sides == 2 && !c.down && !c.up {
		c.up = true
		n := l.bridged.Add(1)
		for {
			p := l.peakBridged.Load()
			if n <= p || l.peakBridged.CompareAndSwap(p, n) {
				break
			}
		}
	}
	c.mu.Unlock()
}

// hungUp takes the call out of the bridged count.
func (l *load) hungUp(c *callState) {
	c.mu.Lock()
	c.down = true
	if c.up {
		c.up = false
		l.bridged.Add(-1)
	}
	c.mu.Unlock()
}

// runCall places call c, keeps it up until the hang-up phase, then sends BYE at
// its turn. settled is released once the call is answered or has failed.
func (l *load) runCall(ctx context.Context, c *callState, ua *caller, target sip.Uri, settled func()) {
	defer settled()
	l.placed.Add(1)
	s, err := l.newStream(dirCallerToAgent, uint32(c.idx))
	if err != nil {
		l.fail("caller media socket: " + err.Error())
		return
	}
	defer s.stop()
	s.call.Store(c)
	c.caller.Store(s)
	offer := sdp.Description{Addr: s.addr(), SessionID: uint64(c.idx) + 1, Version: 1,
		Codecs: []sdp.Codec{sdp.PCMU}, TelephoneEvent: 101, Direction: sdp.SendRecv}.Marshal()
	t0 := time.Now()
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	dlg, err := ua.dcc.Invite(actx, target, offer, contentSDP())
	if err != nil {
		cancel()
		l.fail("INVITE: " + failReason(err))
		return
	}
	defer dlg.Close()
	var early []byte
	err = dlg.WaitAnswer(actx, sipgo.AnswerOptions{OnResponse: func(r *sip.Response) error {
		if r.StatusCode == 183 {
			early = r.Body()
		}
		return nil
	}})
	cancel()
	if err != nil {
		l.fail(failReason(err))
		return
	}
	l.setup.add(time.Since(t0))
	if err := dlg.Ack(ctx); err != nil {
		l.fail("ACK: " + failReason(err))
		return
	}
	body := dlg.InviteResponse.Body()
	if len(body) == 0 {
		body = early
	}
	ans, err := sdp.Parse(body)
	if err != nil || !ans.Addr.IsValid() {
		l.fail("answer without usable SDP")
		l.bye(dlg.Bye)
		return
	}
	l.answered.Add(1)
	s.start(ans.Addr)
	settled()

	select {
	case <-dlg.Context().Done(): // the node hung up (BYE) before the tool did
		l.endedByNode.Add(1)
		l.hungUp(c)
		return
	case <-ctx.Done(): // aborted: hang up at once
	case <-l.hangup:
		due := l.hangupAt.Add(time.Duration(float64(c.idx) / *flagRate * float64(time.Second)))
		select {
		case <-time.After(time.Until(due)):
		case <-ctx.Done():
		case <-dlg.Context().Done():
			l.endedByNode.Add(1)
			l.hungUp(c)
			return
		}
	}
	l.hungUp(c)
	s.stop()
	if l.bye(dlg.Bye) {
		l.byeOK.Add(1)
	} else {
		l.byeFailed.Add(1)
	}
}

// bye sends a BYE with a bound on how long it may take.
func (l *load) bye(f func(context.Context) error) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f(ctx) == nil
}

// snapshot is what is sampled at the edges of the measured window.
type snapshot struct {
	at         time.Time
	node, self procstat.Stat
	udp        map[string]int64
}

func (l *load) snap(pid int) snapshot {
	return snapshot{at: time.Now(), node: procstat.Read(pid), self: procstat.Read(os.Getpid()), udp: udpCounters()}
}

func run() (int, error) {
	if *flagAgents == 0 {
		*flagAgents = *flagCalls
	}
	switch {
	case *flagCalls < 1 || *flagRate <= 0:
		return 1, errors.New("-calls must be ≥ 1 and -rate > 0")
	case *flagAgents < *flagCalls || *flagAgents > 9999:
		return 1, errors.New("-agents must be at least -calls (each call holds one agent) and at most 9999")
	case *flagHold < *flagWarmup+time.Second:
		return 1, errors.New("-hold must exceed -warmup by at least 1s")
	case *flagPerSocket < 1 || *flagCallerUAs < 1 || *flagSenders < 1:
		return 1, errors.New("-phones-per-socket, -caller-uas and -senders must be ≥ 1")
	}
	ramp := time.Duration(float64(*flagCalls) / *flagRate * float64(time.Second))
	if *flagTimeout == 0 {
		*flagTimeout = 2*ramp + *flagHold + 60*time.Second
	}

	// Two sockets per call here, two in the node, plus signalling and HTTP.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if need := uint64(2**flagCalls + 256); lim.Cur < need {
		return 1, fmt.Errorf("open files limit %d: need at least %d", lim.Cur, need)
	}

	dir := *flagDir
	var err error
	if dir == "" {
		if dir, err = os.MkdirTemp("", "rtpload-"); err != nil {
			return 1, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return 1, err
	}
	root, err := moduleRoot()
	if err != nil {
		return 1, err
	}
	maxCalls := max(2000, *flagCalls+100)
	cfgPath, routePoint, err := writeConfig(root, dir, *flagAgents, maxCalls)
	if err != nil {
		return 1, err
	}
	bin := *flagNodeBin
	if bin == "" {
		fmt.Fprintln(os.Stderr, "rtpload: building ./cmd/ccmesh")
		if bin, err = buildNode(root, dir); err != nil {
			return 1, err
		}
	}
	nd, err := startNode(bin, cfgPath, dir, *flagKeep)
	if err != nil {
		return 1, err
	}
	if *flagKeep {
		defer fmt.Fprintf(os.Stderr, "rtpload: -keep: node pid %d left running (config %s)\n", nd.pid, cfgPath)
	} else {
		defer nd.stop()
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", *flagHTTPPort)
	if err := nd.waitReady(base, 30*time.Second); err != nil {
		return 1, err
	}
	nodeSIP := fmt.Sprintf("127.0.0.1:%d", *flagSIPPort)
	fmt.Fprintf(os.Stderr, "rtpload: node pid %d ready (SIP %s, HTTP %s, work dir %s)\n", nd.pid, nodeSIP, base, dir)

	ctx, cancel := context.WithTimeout(context.Background(), *flagTimeout)
	defer cancel()
	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	// The SIP library logs to a file: warnings only.
	sipLog, err := os.Create(filepath.Join(dir, "rtpload-sip.log"))
	if err != nil {
		return 1, err
	}
	defer sipLog.Close()
	sip.SetDefaultLogger(slog.New(slog.NewTextHandler(sipLog, &slog.HandlerOptions{Level: slog.LevelWarn})))

	l := &load{epoch: time.Now(), done: make(chan struct{}), failures: map[string]int{}, hangup: make(chan struct{})}
	defer close(l.done)
	l.phase.Store(phaseRamp)
	l.calls = make([]*callState, *flagCalls)
	for i := range l.calls {
		l.calls[i] = &callState{idx: i}
	}
	sendCtx, stopSenders := context.WithCancel(context.Background())
	defer stopSenders()
	for i := range *flagSenders {
		sh := &sender{}
		l.senders = append(l.senders, sh)
		go sh.run(sendCtx, l, time.Duration(i)*slotDur/time.Duration(*flagSenders))
	}

	// Agents: phones registered, then logged in and ready.
	phones, err := startPhones(l, *flagAgents, *flagPerSocket)
	defer closePhones(phones)
	if err != nil {
		return 1, err
	}
	t := time.Now()
	if err := parallel(ctx, *flagAgents, func(i int) error { return phones[i / *flagPerSocket].register(ctx, nodeSIP, i) }); err != nil {
		return 1, err
	}
	if err := readyAgents(ctx, base, *flagAgents); err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "rtpload: %d agents registered and ready in %s\n", *flagAgents, time.Since(t).Round(time.Millisecond))

	callers, err := startCallers(*flagCallerUAs)
	defer closeCallers(callers)
	if err != nil {
		return 1, err
	}
	var target sip.Uri
	if err := sip.ParseUri("sip:"+routePoint+"@"+nodeSIP, &target); err != nil {
		return 1, err
	}

	// Progress on stderr every 5 s.
	progressCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	go l.progress(progressCtx, nd.pid)

	// 1. Place the calls at -rate, absolute schedule.
	start := l.snap(nd.pid)
	var settled, ended sync.WaitGroup
	aborted := ""
place:
	for i, c := range l.calls {
		due := start.at.Add(time.Duration(float64(i) / *flagRate * float64(time.Second)))
		select {
		case <-time.After(time.Until(due)):
		case <-ctx.Done():
			break place
		}
		settled.Add(1)
		ended.Add(1)
		var once sync.Once
		go func() {
			defer ended.Done()
			l.runCall(ctx, c, callers[i%len(callers)], target, func() { once.Do(settled.Done) })
		}()
	}
	if !waitGroup(ctx, &settled) {
		aborted = "before every call was set up"
	}

	// 2. Hold: warm-up, then the measured window.
	holdStart := time.Now()
	var win0, win1 snapshot
	var drops map[uint16]uint64
	if aborted == "" {
		sleepCtx(ctx, *flagWarmup)
		win0 = l.snap(nd.pid)
		l.phase.Store(phaseWindow)
		sleepCtx(ctx, holdStart.Add(*flagHold).Sub(time.Now()))
		l.phase.Store(phaseNone)
		win1 = l.snap(nd.pid)
		if ctx.Err() != nil {
			aborted = "during the hold"
		}
		// Packets still in flight: until none arrived for 500 ms, at most 5 s.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if l.now()-time.Duration(l.lastWindowRx.Load()) > 500*time.Millisecond {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		drops = socketDrops()
	}
	peakAtWindowEnd := l.bridged.Load()

	// 3. Hang up, from the caller side, at -rate.
	l.hangupAt = time.Now()
	close(l.hangup)
	callsDone := waitGroup(ctx, &ended)
	if !callsDone && aborted == "" {
		aborted = "while hanging up"
	}
	// The node BYEs the agents' legs after the callers' BYEs.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && l.agentEnded.Load() < l.agentAnswered.Load(); {
		time.Sleep(100 * time.Millisecond)
	}
	stopSenders()
	stopProgress()
	end := l.snap(nd.pid)
	if ctx.Err() != nil && aborted == "" {
		aborted = "at the end"
	}

	pass := l.report(reportInput{dir: dir, pid: nd.pid, log: nd.log, start: start, win0: win0, win1: win1, end: end,
		drops: drops, atWindowEnd: peakAtWindowEnd, aborted: aborted, cause: context.Cause(ctx)})
	if !pass {
		return 3, nil
	}
	return 0, nil
}

// waitGroup waits for wg or ctx; it reports whether wg finished.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// progress prints a status line every 5 s.
func (l *load) progress(ctx context.Context, pid int) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	prev := l.snap(pid)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur := l.snap(pid)
		over := cur.at.Sub(prev.at)
		fmt.Fprintf(os.Stderr, "rtpload: %4.0fs placed %d answered %d bridged %d failed %d | node %.2f cores, RSS %.0f MiB | rtpload %.2f cores\n",
			l.now().Seconds(), l.placed.Load(), l.answered.Load(), l.bridged.Load(), l.failedCount(),
			procstat.Cores(prev.node, cur.node, over), cur.node.RSSMiB, procstat.Cores(prev.self, cur.self, over))
		prev = cur
	}
}

func (l *load) failedCount() int {
	l.failMu.Lock()
	defer l.failMu.Unlock()
	n := 0
	for _, v := range l.failures {
		n += v
	}
	return n
}

type reportInput struct {
	dir, log               string
	pid                    int
	start, win0, win1, end snapshot
	drops                  map[uint16]uint64
	atWindowEnd            int64
	aborted                string
	cause                  error
}

// flow is one direction's counts in one phase.
type flow struct {
	streams          int // sending streams that counted packets
	sent, recv, errs uint64
	reordered        uint64
	foreign, moh     uint64 // received: from a third party; unmarked after the bridge
}

func (f flow) lost() int64 { return int64(f.sent) - int64(f.recv) }

func (f flow) lossPct() float64 {
	if f.sent == 0 {
		return 0
	}
	return 100 * float64(f.lost()) / float64(f.sent)
}

// report prints the summary and reports whether the run passed.
func (l *load) report(in reportInput) bool {
	l.mu.Lock()
	streams := l.streams
	l.mu.Unlock()
	var flows [nPhases][2]flow
	var sendErrs [2]uint64
	var unanswered [2]int // streams started that never heard the other party
	for _, s := range streams {
		for ph := phaseRamp; ph < nPhases; ph++ {
			f := &flows[ph][s.dir]
			n := s.sent[ph].Load()
			f.sent += n
			if n > 0 {
				f.streams++
			}
			g := &flows[ph][1-s.dir] // what s received was sent the other way
			g.recv += s.recv[ph].Load()
		}
		sendErrs[s.dir] += s.sendErrs.Load()
		r := &flows[phaseWindow][1-s.dir]
		r.reordered += s.reordered.Load()
		r.foreign += s.foreign.Load()
		r.moh += s.unmarkedAfterBridge.Load()
		if s.started.Load() && !s.heard.Load() {
			unanswered[s.dir]++
		}
	}
	// Per call, in the window.
	lossyCalls, worst := 0, 0.0
	for _, c := range l.calls {
		cs, as := c.caller.Load(), c.agent.Load()
		if cs == nil || !cs.started.Load() {
			continue
		}
		lossy := false
		for _, p := range [][2]*stream{{cs, as}, {as, cs}} {
			if p[0] == nil {
				continue
			}
			sent := p[0].sent[phaseWindow].Load()
			var recv uint64
			if p[1] != nil {
				recv = p[1].recv[phaseWindow].Load()
			}
			if sent > recv {
				lossy = true
				worst = max(worst, 100*float64(sent-recv)/float64(sent))
			}
		}
		if lossy {
			lossyCalls++
		}
	}

	window := in.win1.at.Sub(in.win0.at)
	ramp := in.win0.at.Sub(in.start.at)
	failed := l.failedCount()
	fmt.Printf("\nrtpload: %d calls at %g/s to one node (pid %d), %d agents, hold %s (measured window %.1fs after %s warm-up)\n",
		*flagCalls, *flagRate, in.pid, *flagAgents, *flagHold, window.Seconds(), *flagWarmup)
	if in.aborted != "" {
		fmt.Printf("  ABORTED %s: %v\n", in.aborted, in.cause)
	}
	fmt.Printf("calls: attempted %d, answered %d, failed %d", l.placed.Load(), l.answered.Load(), failed)
	if failed > 0 {
		fmt.Printf(" (%s)", l.failureList())
	}
	fmt.Printf("\n  setup INVITE→200: p50 %s, p99 %s, max %s\n", ms(l.setup.quantile(0.5)), ms(l.setup.quantile(0.99)), ms(time.Duration(l.setup.max.Load())))
	fmt.Printf("  ended by the node before the caller's BYE: %d; caller BYEs ok %d, failed %d; agent legs answered %d, hung up by the node %d, refused %d\n",
		l.endedByNode.Load(), l.byeOK.Load(), l.byeFailed.Load(), l.agentAnswered.Load(), l.agentEnded.Load(), l.agentRefused.Load())
	fmt.Printf("bridged (media heard both ways): peak %d concurrent, %d at the end of the window\n", l.peakBridged.Load(), in.atWindowEnd)
	if unanswered[0]+unanswered[1] > 0 {
		fmt.Printf("  media never arrived: %d callers heard no agent, %d agents heard no caller\n", unanswered[0], unanswered[1])
	}
	pass := in.aborted == "" && failed == 0 && l.answered.Load() == int64(*flagCalls)
	offeredShort := false
	for _, p := range []struct {
		name  string
		phase int
		over  time.Duration
	}{{"hold window", phaseWindow, window}, {"ramp-up (each call from its bridge to the window)", phaseRamp, 0}} {
		fmt.Printf("RTP, %s:\n", p.name)
		for d := range 2 {
			f := flows[p.phase][d]
			rate := ""
			if p.over > 0 && f.streams > 0 {
				each := float64(f.sent) / float64(f.streams) / p.over.Seconds()
				rate = fmt.Sprintf(" (%d streams, %.1f pkt/s each)", f.streams, each)
				// The node must get the load asked of it, or the run says nothing.
				if nominal := float64(time.Second / framePeriod); each < 0.99*nominal {
					offeredShort = true
				}
			}
			h := &l.latency[p.phase][d]
			fmt.Printf("  %s: sent %d%s, received %d, lost %d (%.3f%%); latency p50 %s p99 %s p99.9 %s max %s\n",
				dirName[d], f.sent, rate, f.recv, f.lost(), f.lossPct(),
				ms(h.quantile(0.5)), ms(h.quantile(0.99)), ms(h.quantile(0.999)), ms(time.Duration(h.max.Load())))
			if p.phase == phaseWindow {
				if f.lossPct() > *flagMaxLoss || f.sent == 0 {
					pass = false
				}
			}
		}
	}
	fmt.Printf("  calls with loss in the window: %d (worst %.2f%%); received out of order %d/%d, from a wrong party %d/%d, unmarked (music) after the bridge %d/%d (caller→agent/agent→caller)\n",
		lossyCalls, worst, flows[phaseWindow][0].reordered, flows[phaseWindow][1].reordered,
		flows[phaseWindow][0].foreign, flows[phaseWindow][1].foreign, flows[phaseWindow][0].moh, flows[phaseWindow][1].moh)
	if sendErrs[0]+sendErrs[1] > 0 {
		fmt.Printf("  send errors: %d/%d\n", sendErrs[0], sendErrs[1])
	}
	var maxBehind time.Duration
	var skips, skipped uint64
	for _, sh := range l.senders {
		maxBehind = max(maxBehind, time.Duration(sh.maxBehind.Load()))
		skips += sh.lagSkips.Load()
		skipped += sh.skippedFrames.Load()
	}
	fmt.Printf("  rtpload senders: worst lateness %s; fell over %s behind %d times, skipping about %d frames (not sent, not counted)\n",
		ms(maxBehind), maxLag, skips, skipped)
	if offeredShort {
		pass = false
		fmt.Printf("  GENERATOR SATURATED: rtpload sent under 99%% of the nominal 50 pkt/s per stream in the window; the node was not loaded as asked\n")
	}
	if in.drops != nil {
		var nodeDrops, toolDrops uint64
		seen := map[uint16]bool{}
		for _, s := range streams {
			if p := s.dst.Port(); p != 0 && !seen[p] {
				seen[p] = true
				nodeDrops += in.drops[p]
			}
			toolDrops += in.drops[s.addr().Port()]
		}
		d := func(k string) int64 { return in.win1.udp[k] - in.win0.udp[k] }
		fmt.Printf("kernel UDP during the window (whole machine): InErrors %d, RcvbufErrors %d, SndbufErrors %d; socket drops since open: node media sockets %d, rtpload media sockets %d\n",
			d("InErrors"), d("RcvbufErrors"), d("SndbufErrors"), nodeDrops, toolDrops)
	}
	if window > 0 {
		fmt.Printf("node: CPU %.2f cores in the window, %.2f cores during ramp-up (%.1fs); RSS %.1f MiB at the end of the window, peak (VmHWM) %.1f MiB\n",
			procstat.Cores(in.win0.node, in.win1.node, window), procstat.Cores(in.start.node, in.win0.node, ramp), ramp.Seconds(), in.win1.node.RSSMiB, in.win1.node.HWMMiB)
		fmt.Printf("rtpload: CPU %.2f cores in the window, %.2f cores during ramp-up; RSS %.1f MiB at the end of the window, peak %.1f MiB\n",
			procstat.Cores(in.win0.self, in.win1.self, window), procstat.Cores(in.start.self, in.win0.self, ramp), in.win1.self.RSSMiB, in.win1.self.HWMMiB)
	}
	total := in.end.at.Sub(in.start.at)
	fmt.Printf("whole run (%.1fs from the first INVITE): node %.2f cores, rtpload %.2f cores\n",
		total.Seconds(), procstat.Cores(in.start.node, in.end.node, total), procstat.Cores(in.start.self, in.end.self, total))
	lines, byLevel, msgs := logSummary(in.log)
	fmt.Printf("node log: %d lines, %d ERROR, %d WARN", lines, byLevel["ERROR"], byLevel["WARN"])
	if len(msgs) > 0 {
		fmt.Printf("; most frequent: %s", strings.Join(msgs[:min(3, len(msgs))], " | "))
	}
	sipLines, _, _ := logSummary(filepath.Join(in.dir, "rtpload-sip.log"))
	fmt.Printf("\nrtpload's SIP library warnings: %d (rtpload-sip.log); work directory %s\n", sipLines, in.dir)
	verdict := "NOT MET"
	if pass {
		verdict = "met"
	}
	fmt.Printf("pass mark (every call answered, full load offered, loss ≤ %g%% both ways in the window): %s\n", *flagMaxLoss, verdict)
	return pass
}

func (l *load) failureList() string {
	l.failMu.Lock()
	defer l.failMu.Unlock()
	var keys []string
	for k := range l.failures {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return l.failures[keys[i]] > l.failures[keys[j]] })
	for i, k := range keys {
		keys[i] = fmt.Sprintf("%d× %s", l.failures[k], k)
	}
	return strings.Join(keys, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
