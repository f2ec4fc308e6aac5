// Package core holds the typed identifiers and small value types shared by every
// ccmesh component. It imports nothing internal, so any package may depend on it.
package core

import (
	"fmt"
	"strings"
)

// NodeID names one ccmesh node in a cluster.
type NodeID string

// AgentID names one agent, unique in the cluster.
type AgentID string

// QueueID names one queue, unique in the cluster.
type QueueID string

// InteractionID names one interaction (a call, chat, callback or task).
type InteractionID string

// DN is a directory number: the dialable address of an agent or a route point.
type DN string

// SkillName names a skill such as "english" or "billing".
type SkillName string

// RequestID is a caller-chosen id that makes a request idempotent.
type RequestID string

// LeaseID names one reservation lease at its owner.
type LeaseID uint64

// Channel is the medium of an interaction. Channels differ only at the edges of
// a node; the router and agent state treat them alike except for capacity.
type Channel string

// The channels ccmesh knows.
const (
	ChannelVoice    Channel = "voice"
	ChannelChat     Channel = "chat"
	ChannelCallback Channel = "callback"
	ChannelTask     Channel = "task"
)

// Channels lists every channel in a stable order.
var Channels = []Channel{ChannelVoice, ChannelChat, ChannelCallback, ChannelTask}

// ParseChannel returns the channel named s, or an error naming the valid values.
func ParseChannel(s string) (Channel, error) {
	for _, c := range Channels {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown channel %q (want one of %s)", s, ChannelNames())
}

// ChannelNames returns the channel names joined for error messages.
func ChannelNames() string {
	names := make([]string, len(Channels))
	for i, c := range Channels {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// Index returns the position of c in Channels, or -1 when c is not a channel.
// It lets hot paths keep per-channel counters in small arrays instead of maps.
func (c Channel) Index() int {
	switch c {
	case ChannelVoice:
		return 0
	case ChannelChat:
		return 1
	case ChannelCallback:
		return 2
	case ChannelTask:
		return 3
	}
	return -1
}

// NumChannels is len(Channels), usable as an array bound.
const NumChannels = 4

// IMProtocol names an instant-messaging protocol an agent can handle.
type IMProtocol string

// The IM protocols ccmesh speaks.
const (
	IMXMPP    IMProtocol = "xmpp"
	IMSIP     IMProtocol = "sip"
	IMWebChat IMProtocol = "webchat"
)

// IMProtocols lists every IM protocol in a stable order.
var IMProtocols = []IMProtocol{IMXMPP, IMSIP, IMWebChat}
