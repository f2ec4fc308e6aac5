package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// wavSpec describes a WAV file for makeWAV.
type wavSpec struct {
	format     uint16 // format tag (wrapped in WAVE_FORMAT_EXTENSIBLE if extensible)
	channels   uint16
	rate       uint32
	bits       uint16
	extensible bool
	data       []byte
	dataSize   *uint32 // overrides the data chunk's declared size
	riffSize   *uint32 // overrides the RIFF size
	before     []chunk // chunks written before fmt
	between    []chunk // chunks written between fmt and data
	noFmt      bool
	noData     bool
}

// chunk is a raw RIFF chunk.
type chunk struct {
	id   string
	body []byte
}

// makeWAV builds a RIFF/WAVE file with encoding/binary.
func makeWAV(s wavSpec) []byte {
	var body bytes.Buffer
	body.WriteString("WAVE")
	writeChunk := func(c chunk) {
		body.WriteString(c.id)
		binary.Write(&body, binary.LittleEndian, uint32(len(c.body)))
		body.Write(c.body)
		if len(c.body)%2 == 1 {
			body.WriteByte(0)
		}
	}
	for _, c := range s.before {
		writeChunk(c)
	}
	if !s.noFmt {
		var f bytes.Buffer
		tag := s.format
		if s.extensible {
			tag = wavExtensible
		}
		align := s.channels * s.bits / 8
		binary.Write(&f, binary.LittleEndian, wavFmt{
			FormatTag: tag, Channels: s.channels, SampleRate: s.rate,
			ByteRate: s.rate * uint32(align), BlockAlign: align, BitsPerSample: s.bits,
		})
		if s.extensible {
			binary.Write(&f, binary.LittleEndian, struct {
				CbSize, ValidBits uint16
				ChannelMask       uint32
				SubFormat         [16]byte
			}{22, s.bits, 4, [16]byte{byte(s.format), byte(s.format >> 8), 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71}})
		}
		writeChunk(chunk{"fmt ", f.Bytes()})
	}
	for _, c := range s.between {
		writeChunk(c)
	}
	if !s.noData {
		if s.dataSize != nil {
			body.WriteString("data")
			binary.Write(&body, binary.LittleEndian, *s.dataSize)
			body.Write(s.data)
		} else {
			writeChunk(chunk{"data", s.data})
		}
	}
	var out bytes.Buffer
	out.WriteString("RIFF")
	size := uint32(body.Len())
	if s.riffSize != nil {
		size = *s.riffSize
	}
	binary.Write(&out, binary.LittleEndian, size)
	out.Write(body.Bytes())
	return out.Bytes()
}

// pcm16 returns samples as little-endian bytes.
func pcm16(samples []int16) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, samples)
	return b.Bytes()
}

// testSamples returns n samples of a ramp that covers the whole int16 range.
func testSamples(n int) []int16 {
	s := make([]int16, n)
	for i := range s {
		s[i] = int16(i*997 - 32768)
	}
	return s
}

func u32(v uint32) *uint32 { return &v }

func TestLoadWAVAccepts(t *testing.T) {
	samples := testSamples(400) // 2.5 frames
	g := make([]byte, 333)      // every code, including µ-law's negative zero 0x7F
	for i := range g {
		g[i] = byte(i)
	}
	pcm := func(s wavSpec) wavSpec {
		s.format, s.channels, s.rate, s.bits, s.data = wavPCM, 1, 8000, 16, pcm16(samples)
		return s
	}
	tests := []struct {
		name   string
		spec   wavSpec
		native Codec // for G.711 files: the codec whose bytes are kept
		want   []int16
	}{
		{"pcm16", pcm(wavSpec{}), 0, samples},
		{"pcm16 extensible", pcm(wavSpec{extensible: true}), 0, samples},
		{"pcm16 with LIST and odd chunks", pcm(wavSpec{
			before:  []chunk{{"LIST", []byte("INFOISFT\x05\x00\x00\x00sox!\x00\x00")}},
			between: []chunk{{"fact", []byte{1, 2, 3}}, {"junk", nil}},
		}), 0, samples},
		{"pcm16 streamed sizes", pcm(wavSpec{dataSize: u32(0xFFFFFFFF), riffSize: u32(0xFFFFFFFF)}), 0, samples},
		{"pcm16 RIFF size zero", pcm(wavSpec{riffSize: u32(0)}), 0, samples},
		{"pcm16 odd trailing byte", wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 16,
			data: append(pcm16(samples), 0x7F)}, 0, samples},
		{"mulaw", wavSpec{format: wavMuLaw, channels: 1, rate: 8000, bits: 8, data: g}, PCMU, DecodeMuLawSlice(nil, g)},
		{"alaw", wavSpec{format: wavALaw, channels: 1, rate: 8000, bits: 8, data: g}, PCMA, DecodeALawSlice(nil, g)},
		{"alaw extensible", wavSpec{format: wavALaw, channels: 1, rate: 8000, bits: 8, data: g, extensible: true}, PCMA, DecodeALawSlice(nil, g)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clip, err := LoadWAV(bytes.NewReader(makeWAV(tt.spec)))
			if err != nil {
				t.Fatalf("LoadWAV: %v", err)
			}
			if !slices.Equal(clip.Samples(), tt.want) {
				t.Fatalf("samples differ: got %d, want %d", len(clip.Samples()), len(tt.want))
			}
			if want := (len(tt.want) + FrameSamples - 1) / FrameSamples; clip.Frames() != want {
				t.Fatalf("Frames() = %d, want %d", clip.Frames(), want)
			}
			for _, codec := range []Codec{PCMU, PCMA} {
				// The expected stream: the original bytes for the native codec of
				// a G.711 file, otherwise the samples encoded; then silence padding.
				want := codec.Encode(nil, tt.want)
				if tt.spec.format != wavPCM && codec == tt.native {
					want = slices.Clone(g)
				}
				for len(want)%FrameSamples != 0 {
					want = append(want, codec.silenceByte())
				}
				var got []byte
				for i := range clip.Frames() {
					got = append(got, clip.Frame(i, codec)...)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%v frames differ from the expected encoding", codec)
				}
			}
		})
	}
}

func TestLoadWAVRejects(t *testing.T) {
	ok := wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(testSamples(160))}
	with := func(f func(*wavSpec)) wavSpec { s := ok; f(&s); return s }
	tests := []struct {
		name string
		file []byte
		want string // substring of the error
	}{
		{"empty", nil, "no RIFF/WAVE header"},
		{"not riff", []byte("ID3\x04 this is an mp3 file, honest"), "no RIFF/WAVE header"},
		{"rf64", append([]byte("RF64\xff\xff\xff\xffWAVE"), make([]byte, 64)...), "RF64"},
		{"no fmt", makeWAV(with(func(s *wavSpec) { s.noFmt = true })), "data chunk before fmt chunk"},
		{"no data", makeWAV(with(func(s *wavSpec) { s.noData = true })), "no data chunk"},
		{"only header", []byte("RIFF\x04\x00\x00\x00WAVE"), "no fmt chunk"},
		{"empty data", makeWAV(with(func(s *wavSpec) { s.data = nil })), "no audio"},
		{"short fmt", makeWAV(wavSpec{noFmt: true, before: []chunk{{"fmt ", make([]byte, 14)}}}), "fmt chunk of 14 bytes"},
		{"two fmt", makeWAV(with(func(s *wavSpec) { s.between = []chunk{{"fmt ", make([]byte, 16)}} })), "two fmt chunks"},
		{"short extensible", makeWAV(wavSpec{noFmt: true, before: []chunk{{"fmt ", []byte{0xFE, 0xFF, 1, 0, 0x40, 0x1F, 0, 0, 0x80, 0x3E, 0, 0, 2, 0, 16, 0, 0, 0}}}}), "extensible fmt chunk"},
		{"absurd chunk size", append([]byte("RIFF\x00\x00\x00\x00WAVELIST\xff\xff\xff\x7f"), make([]byte, 100)...), `chunk "LIST" claims 2147483647 bytes but only 100 remain`},
		{"truncated data", makeWAV(with(func(s *wavSpec) { s.dataSize = u32(100000) })), `chunk "data" claims 100000 bytes but only 320 remain`},
		{"bad block align", func() []byte {
			b := makeWAV(ok)
			binary.LittleEndian.PutUint16(b[32:], 4) // fmt.BlockAlign
			return b
		}(), "block align 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadWAV(bytes.NewReader(tt.file))
			if err == nil {
				t.Fatalf("LoadWAV accepted it")
			}
			if !errors.Is(err, ErrInvalidWAV) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q: want ErrInvalidWAV containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadWAVFormatErrors(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	tests := []struct {
		file string
		spec wavSpec
		want string
	}{
		{"music.wav", wavSpec{format: wavPCM, channels: 2, rate: 44100, bits: 16, data: make([]byte, 400)},
			`music.wav: 44100 Hz stereo 16-bit PCM; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with "sox music.wav -r 8000 -c 1 music-8k.wav"`},
		{"hello.wav", wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 8, data: make([]byte, 400)},
			`hello.wav: 8000 Hz mono 8-bit PCM; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with "sox hello.wav -r 8000 -c 1 -e signed-integer -b 16 hello-8k.wav"`},
		{"my prompt.WAV", wavSpec{format: wavFloat, channels: 6, rate: 48000, bits: 32, data: make([]byte, 480), extensible: true},
			`my prompt.WAV: 48000 Hz 6-channel 32-bit float; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with "sox 'my prompt.WAV' -r 8000 -c 1 -e signed-integer -b 16 'my prompt-8k.wav'"`},
		{"wide.wav", wavSpec{format: wavMuLaw, channels: 1, rate: 16000, bits: 8, data: make([]byte, 400)},
			`wide.wav: 16000 Hz mono 8-bit µ-law; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with "sox wide.wav -r 8000 -c 1 wide-8k.wav"`},
		{"adpcm.wav", wavSpec{format: 0x0011, channels: 1, rate: 8000, bits: 4, data: make([]byte, 400)},
			`adpcm.wav: 8000 Hz mono 4-bit IMA ADPCM; need`},
		{"odd.wav", wavSpec{format: 0x1234, channels: 1, rate: 8000, bits: 16, data: make([]byte, 400)},
			`odd.wav: 8000 Hz mono 16-bit format 0x1234; need`},
	}
	for _, tt := range tests {
		if err := os.WriteFile(tt.file, makeWAV(tt.spec), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadWAVFile(tt.file)
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Name != tt.file {
			t.Errorf("%s: error %v, want a *FormatError named %q", tt.file, err, tt.file)
			continue
		}
		if !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: error\n  %s\nwant\n  %s", tt.file, err, tt.want)
		}
	}
	// Without a file name the message still names the format and a command.
	_, err := LoadWAV(bytes.NewReader(makeWAV(tests[0].spec)))
	if want := `44100 Hz stereo 16-bit PCM; need 8000 Hz mono (PCM 16-bit, µ-law or A-law): convert with "sox input.wav -r 8000 -c 1 input-8k.wav"`; err == nil || err.Error() != want {
		t.Errorf("LoadWAV error %v, want %s", err, want)
	}
}

func TestLoadWAVFile(t *testing.T) {
	dir := t.TempDir()
	samples := testSamples(1000)
	path := filepath.Join(dir, "ok.wav")
	if err := os.WriteFile(path, makeWAV(wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(samples)}), 0o644); err != nil {
		t.Fatal(err)
	}
	clip, err := LoadWAVFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if clip.Name() != path || !slices.Equal(clip.Samples(), samples) || clip.Duration().Milliseconds() != 125 {
		t.Errorf("clip %q: %d samples, %v", clip.Name(), len(clip.Samples()), clip.Duration())
	}

	if _, err := LoadWAVFile(filepath.Join(dir, "missing.wav")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	bad := filepath.Join(dir, "bad.wav")
	os.WriteFile(bad, []byte("RIFF"), 0o644)
	if _, err := LoadWAVFile(bad); !errors.Is(err, ErrInvalidWAV) || !strings.HasPrefix(err.Error(), bad+": ") {
		t.Errorf("bad file: %v", err)
	}

	// A sparse file larger than the limit is refused before it is read.
	big := filepath.Join(dir, "big.wav")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(makeWAV(wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 16, dataSize: u32(MaxWAVBytes)}))
	f.Truncate(MaxWAVBytes + 1)
	f.Close()
	if _, err := LoadWAVFile(big); !errors.Is(err, ErrWAVTooLarge) {
		t.Errorf("big file: %v", err)
	}
}

func TestLoadWAVTooLargeReader(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 50 MiB")
	}
	hdr := makeWAV(wavSpec{format: wavPCM, channels: 1, rate: 8000, bits: 16, dataSize: u32(0xFFFFFFFF)})
	r := io.MultiReader(bytes.NewReader(hdr), io.LimitReader(zeroReader{}, MaxWAVBytes))
	if _, err := LoadWAV(r); !errors.Is(err, ErrWAVTooLarge) {
		t.Fatalf("LoadWAV of more than %d bytes: %v", MaxWAVBytes, err)
	}
}

// zeroReader reads zeros forever.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }
