// Package media holds the building blocks the node uses to anchor voice media:
// G.711 µ-law and A-law coding, the RTP payload types that carry them, audio clips
// (loaded from WAV files or generated, such as ringback and music on hold) and a
// paced RTP sender that plays clips to a remote party.
//
// Everything here is 8 kHz mono, carried in 20 ms frames of 160 samples, which is
// what every SIP phone and gateway accepts. The package knows nothing of SIP; the
// B2BUA in internal/sip decides what to play to whom.
package media
