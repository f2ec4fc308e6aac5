package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// MaxWAVBytes is the largest WAV file LoadWAV and LoadWAVFile accept (50 MiB,
// about 55 minutes of 8 kHz 16-bit audio).
const MaxWAVBytes = 50 << 20

// WAV format tags (the wFormatTag field of the fmt chunk) this package knows.
const (
	wavPCM        = 0x0001
	wavFloat      = 0x0003
	wavALaw       = 0x0006
	wavMuLaw      = 0x0007
	wavExtensible = 0xFFFE
)

var (
	// ErrInvalidWAV is wrapped by every error about a file that is not a
	// well-formed RIFF/WAVE file (as opposed to a well-formed file in a format
	// that cannot be played, which is a *FormatError).
	ErrInvalidWAV = errors.New("invalid WAV file")
	// ErrWAVTooLarge is returned for input larger than MaxWAVBytes.
	ErrWAVTooLarge = fmt.Errorf("WAV file larger than %d MiB", MaxWAVBytes>>20)
)

// FormatError reports a well-formed WAV file whose audio format cannot be played:
// only 8000 Hz mono 16-bit PCM, µ-law or A-law is accepted. Its message names what
// was found and suggests a sox command that converts the file.
type FormatError struct {
	// Name is the file's path, or empty when it was read from an io.Reader.
	Name string
	// Format is the WAV format tag (1 PCM, 3 float, 6 A-law, 7 µ-law, ...), with
	// WAVE_FORMAT_EXTENSIBLE resolved to its sub-format.
	Format uint16
	// Channels, SampleRate and BitsPerSample are as declared by the fmt chunk.
	Channels      int
	SampleRate    int
	BitsPerSample int
}

// Error describes the format found and the format needed, e.g.
// `music.wav: 44100 Hz stereo 16-bit PCM; need 8000 Hz mono (PCM 16-bit, µ-law
// or A-law): convert with "sox music.wav -r 8000 -c 1 music-8k.wav"`.
func (e *FormatError) Error() string {
	var b strings.Builder
	if e.Name != "" {
		b.WriteString(e.Name)
		b.WriteString(": ")
	}
	var ch string
	switch e.Channels {
	case 1:
		ch = "mono"
	case 2:
		ch = "stereo"
	default:
		ch = fmt.Sprintf("%d-channel", e.Channels)
	}
	fmt.Fprintf(&b, "%d Hz %s %d-bit %s", e.SampleRate, ch, e.BitsPerSample, formatName(e.Format))
	in, out := e.Name, ""
	if in == "" {
		in = "input.wav"
	}
	out = strings.TrimSuffix(in, filepath.Ext(in)) + "-8k.wav"
	opts := "-r 8000 -c 1"
	if !(e.Format == wavPCM && e.BitsPerSample == 16) && e.Format != wavMuLaw && e.Format != wavALaw {
		opts += " -e signed-integer -b 16"
	}
	fmt.Fprintf(&b, "; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with \"sox %s %s %s\"",
		shellQuote(in), opts, shellQuote(out))
	return b.String()
}

// formatName names a WAV format tag for messages.
func formatName(tag uint16) string {
	switch tag {
	case wavPCM:
		return "PCM"
	case wavFloat:
		return "float"
	case wavALaw:
		return "A-law"
	case wavMuLaw:
		return "µ-law"
	case 0x0002:
		return "MS ADPCM"
	case 0x0011:
		return "IMA ADPCM"
	case 0x0031:
		return "GSM 6.10"
	case 0x0055:
		return "MP3"
	}
	return fmt.Sprintf("format 0x%04X", tag)
}

// shellQuote quotes s for a POSIX shell when it holds anything unusual.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r == '+' ||
			'0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// LoadWAVFile reads a WAV file; see LoadWAV. Errors start with path. Files larger
// than MaxWAVBytes are refused before being read.
func LoadWAVFile(path string) (*Clip, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError already names the file
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > MaxWAVBytes {
		return nil, fmt.Errorf("%s: %w (%d bytes)", path, ErrWAVTooLarge, fi.Size())
	}
	c, err := LoadWAV(f)
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.Name = path
			return nil, fe
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.name = path
	return c, nil
}

// LoadWAV reads a RIFF/WAVE file from r and returns it as a clip. Accepted: 8000
// Hz mono 16-bit PCM (encoded to the stream's codec when played), and 8000 Hz
// mono µ-law (format 7) or A-law (format 6), whose bytes are sent unchanged to a
// stream of the same codec. Any other format gives a *FormatError; a malformed
// file an error wrapping ErrInvalidWAV; more than MaxWAVBytes of input
// ErrWAVTooLarge. LoadWAV reads r to the end (or to MaxWAVBytes+1) and allocates
// memory proportional to what it read, whatever the headers claim.
func LoadWAV(r io.Reader) (*Clip, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxWAVBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read WAV: %w", err)
	}
	if len(data) > MaxWAVBytes {
		return nil, ErrWAVTooLarge
	}
	return parseWAV(data)
}

// wavFmt is the fixed part of a fmt chunk (16 bytes, little-endian).
type wavFmt struct {
	FormatTag     uint16
	Channels      uint16
	SampleRate    uint32
	ByteRate      uint32
	BlockAlign    uint16
	BitsPerSample uint16
}

// invalid returns an error wrapping ErrInvalidWAV.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidWAV, fmt.Sprintf(format, args...))
}

// parseWAV parses a whole RIFF/WAVE file held in data.
func parseWAV(data []byte) (*Clip, error) {
	if len(data) < 12 || string(data[0:4]) != "RIFF" || string(data[8:12]) != "WAVE" {
		if len(data) >= 4 && string(data[0:4]) == "RF64" {
			return nil, invalid("RF64 (64-bit WAV) is not supported")
		}
		return nil, invalid("no RIFF/WAVE header")
	}
	// The RIFF size is often wrong (streamed writers leave 0 or 0xFFFFFFFF): trust
	// the bytes present, but never read past the declared end when it is sane.
	body := data[12:]
	if riff := binary.LittleEndian.Uint32(data[4:8]); riff >= 4 && uint64(riff)-4 < uint64(len(body)) {
		body = body[:riff-4]
	}

	var (
		fmtc    *wavFmt
		subTag  uint16
		payload []byte
		gotData bool
	)
	for len(body) > 0 && !gotData {
		if len(body) < 8 {
			// Trailing junk shorter than a chunk header: some writers pad oddly.
			break
		}
		id := string(body[0:4])
		size := binary.LittleEndian.Uint32(body[4:8])
		body = body[8:]
		if uint64(size) > uint64(len(body)) {
			if id == "data" && size == 0xFFFFFFFF {
				size = uint32(len(body)) // written to a pipe: data runs to the end
			} else {
				return nil, invalid("chunk %q claims %d bytes but only %d remain (truncated file?)", printable(id), size, len(body))
			}
		}
		chunk := body[:size]
		body = body[size:]
		if size%2 == 1 && len(body) > 0 {
			body = body[1:] // chunks are padded to an even length
		}
		switch id {
		case "fmt ":
			if fmtc != nil {
				return nil, invalid("two fmt chunks")
			}
			if size < 16 {
				return nil, invalid("fmt chunk of %d bytes, need at least 16", size)
			}
			fmtc = new(wavFmt)
			if err := binary.Read(bytes.NewReader(chunk[:16]), binary.LittleEndian, fmtc); err != nil {
				return nil, invalid("fmt chunk: %v", err)
			}
			subTag = fmtc.FormatTag
			if subTag == wavExtensible {
				// WAVE_FORMAT_EXTENSIBLE: cbSize(2) validBits(2) channelMask(4)
				// then the sub-format GUID, whose first two bytes are the tag.
				if size < 40 {
					return nil, invalid("extensible fmt chunk of %d bytes, need 40", size)
				}
				subTag = binary.LittleEndian.Uint16(chunk[24:26])
			}
		case "data":
			if fmtc == nil {
				return nil, invalid("data chunk before fmt chunk")
			}
			payload, gotData = chunk, true
		}
	}
	if fmtc == nil {
		return nil, invalid("no fmt chunk")
	}
	if !gotData {
		return nil, invalid("no data chunk")
	}

	ok := fmtc.Channels == 1 && fmtc.SampleRate == SampleRate &&
		(subTag == wavPCM && fmtc.BitsPerSample == 16 ||
			(subTag == wavMuLaw || subTag == wavALaw) && fmtc.BitsPerSample == 8)
	if !ok {
		return nil, &FormatError{
			Format:        subTag,
			Channels:      int(fmtc.Channels),
			SampleRate:    int(fmtc.SampleRate),
			BitsPerSample: int(fmtc.BitsPerSample),
		}
	}
	if want := fmtc.BitsPerSample / 8; fmtc.BlockAlign != want {
		return nil, invalid("block align %d for mono %d-bit audio, want %d", fmtc.BlockAlign, fmtc.BitsPerSample, want)
	}
	if len(payload) < int(fmtc.BlockAlign) {
		return nil, invalid("data chunk holds no audio")
	}
	switch subTag {
	case wavMuLaw:
		return newEncodedClip("", PCMU, payload), nil
	case wavALaw:
		return newEncodedClip("", PCMA, payload), nil
	}
	samples := make([]int16, len(payload)/2) // a trailing odd byte is dropped
	for i := range samples {
		samples[i] = int16(binary.LittleEndian.Uint16(payload[2*i:]))
	}
	return NewClip("", samples), nil
}

// printable returns a chunk id safe to print.
func printable(id string) string {
	b := []byte(id)
	for i, c := range b {
		if c < 0x20 || c > 0x7E {
			b[i] = '?'
		}
	}
	return string(b)
}
