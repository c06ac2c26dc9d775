package jsonstream

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
)

// memPG is a backend in memory for measuring the client's own cost: a
// net.Conn whose writes are answered at once, in the same goroutine, with
// no system call and no scheduling, so that a benchmark of a query through
// it counts only what the driver does. It answers the startup, and
// "SELECT 1" and "SELECT $1::int" (one int4 row, the argument's text or
// 1) through the simple and the extended protocol.
type memPG struct {
	in, out []byte
	started bool
	// arg is the last Bind's first value, the row of the next Execute,
	// in the format the Bind asked for.
	arg []byte
	// queries counts the Query and Execute messages answered.
	queries int
}

// memDialer dials a new memPG for every connection.
type memDialer struct{}

func (memDialer) Dial(string, string) (net.Conn, error) { return &memPG{}, nil }

func (memDialer) DialTimeout(string, string, time.Duration) (net.Conn, error) {
	return &memPG{}, nil
}

var errMemPG = errors.New("memPG: nothing to read")

func (m *memPG) Read(p []byte) (int, error) {
	if len(m.out) == 0 {
		return 0, errMemPG
	}
	n := copy(p, m.out)
	m.out = m.out[n:]
	if len(m.out) == 0 {
		m.out = m.out[:0:0]
	}
	return n, nil
}

func (m *memPG) Write(p []byte) (int, error) {
	m.in = append(m.in, p...)
	for {
		if !m.started {
			if len(m.in) < 4 {
				return len(p), nil
			}
			l := int(binary.BigEndian.Uint32(m.in))
			if len(m.in) < l {
				return len(p), nil
			}
			m.in = m.in[l:]
			m.started = true
			m.send('R', []byte{0, 0, 0, 0})
			for _, kv := range [][2]string{
				{"server_version", "15.0"}, {"client_encoding", "UTF8"},
				{"DateStyle", "ISO, MDY"}, {"integer_datetimes", "on"},
				{"TimeZone", "UTC"}, {"standard_conforming_strings", "on"},
			} {
				m.send('S', []byte(kv[0]+"\x00"+kv[1]+"\x00"))
			}
			m.send('K', []byte{0, 0, 0, 42, 1, 2, 3, 4})
			m.send('Z', []byte{'I'})
			continue
		}
		if len(m.in) < 5 {
			return len(p), nil
		}
		l := int(binary.BigEndian.Uint32(m.in[1:]))
		if len(m.in) < 1+l {
			return len(p), nil
		}
		typ, body := m.in[0], m.in[5:1+l]
		m.answer(typ, body)
		m.in = m.in[1+l:]
		if len(m.in) == 0 {
			m.in = m.in[:0]
		}
	}
}

// rowDesc is the RowDescription of one int4 column.
var memRowDesc = func() []byte {
	b := binary.BigEndian.AppendUint16(nil, 1)
	b = append(b, "int4\x00"...)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, 23)
	b = binary.BigEndian.AppendUint16(b, 4)
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	return binary.BigEndian.AppendUint16(b, 0)
}()

func (m *memPG) answer(typ byte, body []byte) {
	switch typ {
	case 'Q':
		m.queries++
		m.send('T', memRowDesc)
		m.row([]byte("1"))
		m.send('C', []byte("SELECT 1\x00"))
		m.send('Z', []byte{'I'})
	case 'P':
		m.send('1', nil)
	case 'D':
		if body[0] == 'S' {
			m.send('t', []byte{0, 1, 0, 0, 0, 23})
		}
		m.send('T', memRowDesc)
	case 'B':
		m.arg = bindValue(body)
		m.send('2', nil)
	case 'E':
		m.queries++
		m.row(m.arg)
		m.send('C', []byte("SELECT 1\x00"))
	case 'C':
		m.send('3', nil)
	case 'S':
		m.send('Z', []byte{'I'})
	}
}

// bindValue is the row a Bind asks for: its first parameter's value (1
// without one, text or binary as the Bind sent it), in the result format
// the Bind asks for.
func bindValue(b []byte) []byte {
	for range 2 { // portal and statement names
		for b[0] != 0 {
			b = b[1:]
		}
		b = b[1:]
	}
	nf := int(binary.BigEndian.Uint16(b))
	argBinary := nf > 0 && binary.BigEndian.Uint16(b[2:]) == 1
	b = b[2+2*nf:]
	n := int64(1)
	if np := binary.BigEndian.Uint16(b); np > 0 {
		l := int(binary.BigEndian.Uint32(b[2:]))
		v := b[6 : 6+l]
		if argBinary {
			n = int64(int32(binary.BigEndian.Uint32(v)))
		} else {
			n, _ = strconv.ParseInt(string(v), 10, 64)
		}
		b = b[6+l:]
		for range np - 1 {
			b = b[4+int(binary.BigEndian.Uint32(b)):]
		}
	} else {
		b = b[2:]
	}
	if nr := binary.BigEndian.Uint16(b); nr > 0 && binary.BigEndian.Uint16(b[2:]) == 1 {
		return binary.BigEndian.AppendUint32(nil, uint32(n))
	}
	return strconv.AppendInt(nil, n, 10)
}

func (m *memPG) row(v []byte) {
	d := binary.BigEndian.AppendUint16(nil, 1)
	d = binary.BigEndian.AppendUint32(d, uint32(len(v)))
	m.send('D', append(d, v...))
}

func (m *memPG) send(typ byte, body []byte) {
	m.out = append(m.out, typ)
	m.out = binary.BigEndian.AppendUint32(m.out, uint32(4+len(body)))
	m.out = append(m.out, body...)
}

func (m *memPG) Close() error                     { return nil }
func (m *memPG) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (m *memPG) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (m *memPG) SetDeadline(time.Time) error      { return nil }
func (m *memPG) SetReadDeadline(time.Time) error  { return nil }
func (m *memPG) SetWriteDeadline(time.Time) error { return nil }

// memDBs returns a pool of one connection each to memPG: through lib/pq
// alone, and through jsonstream's default mode.
func memDBs(tb testing.TB) (libpq, js *sql.DB) {
	cfg, err := pq.NewConfig("host=mem user=u dbname=d sslmode=disable")
	if err != nil {
		tb.Fatal(err)
	}
	pc, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	pc.Dialer(memDialer{})
	c, err := NewConnectorConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	c.inner.(*pq.Connector).Dialer(dialer{base: memDialer{}, tls: c.tls})
	libpq, js = sql.OpenDB(pc), sql.OpenDB(c)
	for _, db := range []*sql.DB{libpq, js} {
		db.SetMaxOpenConns(1)
		db.SetMaxIdleConns(1)
		tb.Cleanup(func() { _ = db.Close() })
	}
	return libpq, js
}

// BenchmarkQueryRowClient measures what QueryRow costs the client alone,
// against a backend in memory: lib/pq's and jsonstream's side by side, in
// turns of clientBlock queries, so that a noisy machine slows both alike.
// It reports each side's ns/query and their ratio; the allocations are
// the two sides' together.
func BenchmarkQueryRowClient(b *testing.B) {
	libpq, js := memDBs(b)
	ctx := context.Background()
	for _, q := range []struct {
		name string
		run  func(db *sql.DB, i int) *sql.Row
	}{
		{"select1", func(db *sql.DB, _ int) *sql.Row { return db.QueryRowContext(ctx, "SELECT 1") }},
		{"arg", func(db *sql.DB, i int) *sql.Row { return db.QueryRowContext(ctx, "SELECT $1::int", i) }},
	} {
		b.Run("query="+q.name, func(b *testing.B) {
			sides := [2]*sql.DB{libpq, js}
			var took [2]time.Duration
			var got int
			b.ReportAllocs()
			for done, t := 0, 0; done < b.N; t++ {
				k := min(clientBlock, b.N-done)
				for j := range 2 {
					s := (t + j) % 2
					start := time.Now()
					for i := done; i < done+k; i++ {
						if err := q.run(sides[s], i).Scan(&got); err != nil {
							b.Fatal(err)
						}
					}
					took[s] += time.Since(start)
				}
				done += k
			}
			b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "libpq-ns/query")
			b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "jsonstream-ns/query")
			b.ReportMetric(float64(took[1])/float64(took[0]), "ratio")
		})
	}
}

// clientBlock is how many queries a side of BenchmarkQueryRowClient runs
// in its turn.
const clientBlock = 200

// bytesPerQuery is what one QueryRow("SELECT 1") through db allocates,
// in bytes and allocations, averaged over many.
func bytesPerQuery(tb testing.TB, db *sql.DB) (bytes, allocs float64) {
	tb.Helper()
	var got int
	run := func() {
		if err := db.QueryRow("SELECT 1").Scan(&got); err != nil {
			tb.Fatal(err)
		}
	}
	for range 100 {
		run()
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		run()
	}
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / n, float64(after.Mallocs-before.Mallocs) / n
}

// TestQueryRowAllocsVsLibPQ holds what a QueryRow allocates through
// jsonstream's default mode to lib/pq's: no more allocations, and no more
// bytes but for the stream's rows (which Controller reaches, so a query
// cannot reuse an earlier one's; they keep their columns once their
// portal went to the next stream: recycle.go).
func TestQueryRowAllocsVsLibPQ(t *testing.T) {
	libpq, js := memDBs(t)
	lb, la := bytesPerQuery(t, libpq)
	jb, ja := bytesPerQuery(t, js)
	t.Logf("lib/pq %.0f B %.1f allocs; jsonstream %.0f B %.1f allocs", lb, la, jb, ja)
	assert.LessOrEqual(t, ja, la, "allocations per QueryRow")
	own := float64(unsafe.Sizeof(rows{}))
	assert.LessOrEqual(t, jb, lb+own, "bytes per QueryRow")
}
