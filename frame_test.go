package jsonstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/lib/pq/pqerror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// msg is message with the body given byte by byte.
func msg(typ byte, body ...byte) []byte { return message(typ, body) }

// severe is an ErrorResponse's body with severity, code and message.
func severe(severity, code, text string) []byte {
	return errorBody("S"+severity, "V"+severity, "C"+code, "M"+text)
}

// backendSession is what a server sends over a session: the login, a
// result in autocommit, a BEGIN, a result in the transaction block, an
// error that fails it, a notice while idle, and a FATAL before closing.
// readyAt are the offsets just past each ReadyForQuery, with its status.
func backendSession() (stream []byte, readyAt []int, status []byte) {
	var b []byte
	add := func(m []byte) { b = append(b, m...) }
	ready := func(st byte) {
		add(msg('Z', st))
		readyAt = append(readyAt, len(b))
		status = append(status, st)
	}
	add(msg('R', 0, 0, 0, 0))
	add(msg('S', []byte("TimeZone\x00UTC\x00")...))
	add(msg('K', 0, 0, 0, 1, 0, 0, 0, 2))
	ready(txStatusIdle)
	add(msg('T', 0, 0))
	for i := range 20 {
		add(msg('D', bytes.Repeat([]byte{byte('a' + i)}, i*37)...))
	}
	add(msg('C', []byte("SELECT 20\x00")...))
	ready(txStatusIdle)
	add(msg('C', []byte("BEGIN\x00")...))
	ready(txStatusInTx)
	add(msg('T', 0, 0))
	add(msg('D'))
	add(msg('C', []byte("SELECT 1\x00")...))
	ready(txStatusInTx)
	add(msg('E', severe("ERROR", "22012", "division by zero")...))
	ready(txStatusFailed)
	add(msg('N', severe("NOTICE", "00000", "idle notice")...))
	add(msg('E', severe("FATAL", "57P01", "terminating connection due to administrator command")...))
	return b, readyAt, status
}

// startup is the StartupMessage lib/pq writes first.
func startup() []byte {
	b := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	b = append(b, "user\x00u\x00\x00"...)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// framed is a sock on c after lib/pq's StartupMessage: the framer is on.
func framed(t testing.TB, c net.Conn) *sock {
	s := &sock{Conn: c}
	_, err := s.Write(startup())
	require.NoError(t, err)
	return s
}

// readSock reads s as lib/pq would, with reads of bufSize, and returns
// what each read returned and the status the framer saw after each.
func readSock(t testing.TB, s *sock, bufSize int) (reads [][]byte) {
	buf := make([]byte, bufSize)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			reads = append(reads, bytes.Clone(buf[:n]))
		}
		if errors.Is(err, io.EOF) {
			return reads
		}
		require.NoError(t, err)
		require.NotZero(t, n, "a read returned nothing and no error")
	}
}

// statusAtEachReady reads s to its end and returns the transaction status
// the framer gives right after each read that ends at one of readyAt.
func statusAtEachReady(t testing.TB, s *sock, bufSize int, readyAt []int) []byte {
	buf := make([]byte, bufSize)
	ends := make(map[int]bool, len(readyAt))
	for _, r := range readyAt {
		ends[r] = true
	}
	var got []byte
	at := 0
	for {
		n, err := s.Read(buf)
		at += n
		if n > 0 && ends[at] {
			got = append(got, byte(s.frames.status.Load()))
		}
		if errors.Is(err, io.EOF) {
			return got
		}
		require.NoError(t, err)
	}
}

// checkFraming asserts that the reads carry stream unchanged, that no
// read goes past a ReadyForQuery, and that every ReadyForQuery ends one.
func checkFraming(t testing.TB, stream []byte, readyAt []int, reads [][]byte) {
	require.Equal(t, stream, bytes.Join(reads, nil), "lib/pq must get the server's bytes unchanged")
	// One pass over both: each ReadyForQuery must end a read, and no read
	// may reach past one.
	at, next := 0, 0
	for _, r := range reads {
		for next < len(readyAt) && readyAt[next] <= at {
			next++
		}
		end := at + len(r)
		if next < len(readyAt) {
			require.LessOrEqual(t, end, readyAt[next],
				"a read of bytes %d..%d went past the ReadyForQuery ending at %d", at, end, readyAt[next])
			if end < readyAt[next] {
				at = end
				continue
			}
		}
		at = end
	}
	ends := make(map[int]bool, len(reads))
	at = 0
	for _, r := range reads {
		at += len(r)
		ends[at] = true
	}
	for _, ready := range readyAt {
		require.True(t, ends[ready], "no read ended at the ReadyForQuery ending at %d", ready)
	}
}

func TestFramingSplitAtEveryBoundary(t *testing.T) {
	stream, readyAt, _ := backendSession()
	for _, bufSize := range []int{1, 3, 7, 4096} {
		// Every chunk size, so that headers, bodies and ReadyForQuery split
		// at every offset, and one read of several messages.
		for chunk := 1; chunk <= 64; chunk++ {
			s := framed(t, replying(stream, chunk))
			reads := readSock(t, s, bufSize)
			checkFraming(t, stream, readyAt, reads)
			require.False(t, s.frames.broken.Load())
			require.NotNil(t, s.frames.fatal.Load(), "chunk %d, buffer %d", chunk, bufSize)
			require.Equal(t, pqerror.Code("57P01"), s.frames.fatal.Load().Code)
		}
	}
	// The transaction status after each ReadyForQuery, whatever the split.
	_, _, status := backendSession()
	for chunk := 1; chunk <= 64; chunk++ {
		for _, bufSize := range []int{1, 7, 4096} {
			s := framed(t, replying(stream, chunk))
			require.Equal(t, status, statusAtEachReady(t, s, bufSize, readyAt), "chunk %d, buffer %d", chunk, bufSize)
		}
	}
	// A split between every pair of offsets.
	for i := 1; i < len(stream); i++ {
		s := framed(t, replying(stream, i, len(stream)))
		checkFraming(t, stream, readyAt, readSock(t, s, 4096))
	}
}

func TestFramingStatusAndIdle(t *testing.T) {
	stream, readyAt, status := backendSession()
	s := framed(t, replying(stream))
	require.False(t, s.frames.idle(), "a connection that only wrote is not idle")
	buf := make([]byte, 4096)
	at := 0
	for i, ready := range readyAt {
		for at < ready {
			n, err := s.Read(buf)
			require.NoError(t, err)
			at += n
		}
		require.Equal(t, ready, at)
		require.True(t, s.frames.idle(), "idle after ReadyForQuery %d", i)
		require.Equal(t, status[i], byte(s.frames.status.Load()), "status of ReadyForQuery %d", i)
		if i == 0 {
			require.EqualValues(t, ready, s.frames.received(), "received counts the bytes since the write")
		}
		_, err := s.Write([]byte("Q"))
		require.NoError(t, err)
		require.False(t, s.frames.idle(), "a write ends the idle time")
		require.Zero(t, s.frames.received())
	}
	require.Nil(t, s.frames.fatal.Load(), "the FATAL has not been read yet")
	rest := readSock(t, s, 4096)
	require.Equal(t, stream[at:], bytes.Join(rest, nil))
	require.Equal(t, "terminating connection due to administrator command", s.frames.fatal.Load().Message)
	require.Equal(t, pqerror.SeverityFatal, s.frames.fatal.Load().Severity)
}

func TestFramingOffUnlessStartup(t *testing.T) {
	stream, _, _ := backendSession()
	for name, first := range map[string][]byte{
		"SSLRequest":    {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f},
		"CancelRequest": {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2},
		"TLS hello":     {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc},
		"short":         {0, 0, 0, 4},
	} {
		t.Run(name, func(t *testing.T) {
			s := &sock{Conn: replying(stream, 100)}
			_, err := s.Write(first)
			require.NoError(t, err)
			reads := readSock(t, s, 4096)
			require.Equal(t, stream, bytes.Join(reads, nil))
			require.False(t, s.frames.on)
			require.False(t, s.frames.idle())
			require.Nil(t, s.frames.fatal.Load())
			for _, r := range reads[:len(reads)-1] {
				require.Len(t, r, 100, "reads are not cut when the framer is off")
			}
		})
	}
}

func TestFramingBrokenPassesEverything(t *testing.T) {
	stream, _, _ := backendSession()
	bad := append(msg('D', 1, 2, 3), 'D', 0, 0, 0, 2) // a length below 4
	bad = append(bad, stream...)
	s := framed(t, replying(bad))
	reads := readSock(t, s, 2*len(bad))
	require.Equal(t, bad, bytes.Join(reads, nil))
	require.Len(t, reads, 1, "no cut once the bytes are not messages")
	require.True(t, s.frames.broken.Load())
}

func TestFramingHeldReadKeepsError(t *testing.T) {
	// The read that brings a ReadyForQuery and more returns an error with
	// them: the error comes after the held bytes.
	z := msg('Z', 'I')
	more := msg('N', severe("NOTICE", "00000", "n")...)
	boom := errors.New("boom")
	s := framed(t, &fakeSock{onRead: func(p []byte) (int, error) {
		return copy(p, append(bytes.Clone(z), more...)), boom
	}})
	buf := make([]byte, 4096)
	n, err := s.Read(buf)
	require.NoError(t, err)
	require.Equal(t, z, buf[:n])
	n, err = s.Read(buf)
	require.Equal(t, more, buf[:n])
	require.ErrorIs(t, err, boom)
}

func TestFramingErrorCaptureBounded(t *testing.T) {
	long := severe("FATAL", "57P01", string(bytes.Repeat([]byte("x"), maxErrorCapture)))
	stream := append(msg('E', long...), msg('Z', 'I')...)
	s := framed(t, replying(stream, 1000))
	require.Equal(t, stream, bytes.Join(readSock(t, s, 4096), nil))
	require.Nil(t, s.frames.fatal.Load(), "an error past the capture bound is passed on unparsed")
	require.True(t, s.frames.idle())
}

// refFrames parses stream whole: the offsets just past each ReadyForQuery
// and its status, the last FATAL's code, and whether the stream stopped
// being messages.
func refFrames(stream []byte) (readyAt []int, status []byte, fatal string, broken bool) {
	for i := 0; i+5 <= len(stream); {
		length := binary.BigEndian.Uint32(stream[i+1:])
		if length < 4 || length > 1<<30+4 {
			return readyAt, status, fatal, true
		}
		end := i + 1 + int(length)
		if end > len(stream) {
			break
		}
		body := stream[i+5 : end]
		switch stream[i] {
		case 'Z':
			if len(body) == 1 {
				status = append(status, body[0])
			} else {
				status = append(status, 0)
			}
			readyAt = append(readyAt, end)
		case 'E':
			pe, severity := parseErrorFields(body)
			if pe != nil && severity == "" {
				severity = pe.Severity
			}
			if pe != nil && len(body) <= maxErrorCapture &&
				(severity == pqerror.SeverityFatal || severity == pqerror.SeverityPanic) {
				fatal = string(pe.Code)
			}
		}
		i = end
	}
	return readyAt, status, fatal, false
}

func FuzzFraming(f *testing.F) {
	stream, _, _ := backendSession()
	f.Add(stream, []byte{1})
	f.Add(stream, []byte{5, 3, 200})
	f.Add(msg('Z', 'I', 'x'), []byte{2})
	f.Add(append(msg('D', 1), 'D', 0, 0, 0, 1), []byte{4})
	f.Fuzz(func(t *testing.T, stream []byte, chunkBytes []byte) {
		chunks := make([]int, len(chunkBytes))
		for i, c := range chunkBytes {
			chunks[i] = int(c)
		}
		s := framed(t, replying(stream, chunks...))
		bufSize := 4096 // lib/pq's buffer; smaller ones split more
		if len(chunkBytes) > 0 {
			bufSize = 1 + int(chunkBytes[0])*16
		}
		reads := readSock(t, s, bufSize)
		readyAt, _, fatal, broken := refFrames(stream)
		require.Equal(t, stream, bytes.Join(reads, nil))
		require.Equal(t, broken, s.frames.broken.Load())
		if !broken {
			checkFraming(t, stream, readyAt, reads)
		}
		got := ""
		if s.frames.fatal.Load() != nil {
			got = string(s.frames.fatal.Load().Code)
		}
		require.Equal(t, fatal, got)
	})
}

// TestFramingFatalWhileIdle: a FATAL that arrives in the same read as the
// ReadyForQuery before it stays with the socket, where ResetSession and
// the cursor's look before a FETCH find it, and reaches lib/pq on its
// next read; once read, the framer keeps it for the stream's error.
func TestFramingFatalWhileIdle(t *testing.T) {
	z := msg('Z', 'I')
	fatal := msg('E', severe("FATAL", "57P01", "terminating connection due to administrator command")...)
	s := framed(t, replying(append(bytes.Clone(z), fatal...)))
	buf := make([]byte, 4096)
	n, err := s.Read(buf)
	require.NoError(t, err)
	require.Equal(t, z, buf[:n])
	assert.True(t, s.endedWhileIdle())
	require.NotNil(t, s.peekFatal())
	assert.Equal(t, pqerror.Code("57P01"), s.peekFatal().Code)
	assert.Nil(t, s.fatal(), "lib/pq has not read the FATAL yet")
	n, err = s.Read(buf)
	require.NoError(t, err)
	require.Equal(t, fatal, buf[:n])
	assert.False(t, s.endedWhileIdle(), "nothing held any more")
	require.NotNil(t, s.fatal())
	assert.Equal(t, pqerror.Code("57P01"), s.fatal().Code)

	// Without framing (lib/pq's own TLS), the last read is all there is.
	off := &sock{Conn: replying(fatal)}
	_, err = off.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	require.NoError(t, err)
	_, err = off.Read(buf)
	require.NoError(t, err)
	require.NotNil(t, off.fatal())
	assert.Nil(t, off.frames.fatal.Load())
}

// BenchmarkFramerScan measures the framer's cost per message over a
// result of DataRows the size of the bench dataset's documents, read in
// lib/pq's 4096-byte buffers: the figure to hold against a row's cost.
func BenchmarkFramerScan(b *testing.B) {
	row := msg('D', bytes.Repeat([]byte{'x'}, 250)...)
	var stream []byte
	for len(stream) < 1<<20 {
		stream = append(stream, row...)
	}
	stream = append(stream, msg('C', []byte("SELECT 1\x00")...)...)
	stream = append(stream, msg('Z', 'I')...)
	messages := len(stream) / len(row)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		f := framer{on: true}
		for off := 0; off < len(stream); {
			end := min(off+4096, len(stream))
			off += f.scan(stream[off:end])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*messages), "ns/message")
}
