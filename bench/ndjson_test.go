package bench

import (
	"bufio"
	"context"
	"io"
	"testing"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/dataset"
)

// BenchmarkNDJSON protects the cost of jsonstream.WriteNDJSON (which
// checks every document before writing it) over the least a handler can
// do: copy each document and a newline to the writer unchecked. Both read
// through jsonstream; rows/s of writendjson over raw is the number.
func BenchmarkNDJSON(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	n := decodeSize(env)
	query := dataset.Select(env.table, n)
	variants := []struct {
		name  string
		write func(db SQLConn) (int64, error)
	}{
		{"jsonstream-writendjson", func(db SQLConn) (int64, error) {
			rows, err := db.DB.QueryContext(ctx, query)
			if err != nil {
				return 0, err
			}
			return jsonstream.WriteNDJSON(ctx, io.Discard, rows)
		}},
		{"jsonstream-raw", func(db SQLConn) (int64, error) {
			// The same 32 KiB buffer that WriteNDJSON puts before its
			// writer.
			w := bufio.NewWriterSize(io.Discard, 32<<10)
			var written int64
			err := db.Stream(ctx, query, func(data []byte) bool {
				// A bufio.Writer keeps its first error for Flush, below.
				_, _ = w.Write(data)
				_ = w.WriteByte('\n')
				written++
				return true
			})
			if err == nil {
				err = w.Flush()
			}
			return written, err
		}},
	}
	for _, v := range variants {
		b.Run("client="+v.name, func(b *testing.B) {
			db := open(b, clientNamed(Jsonstream), env).(SQLConn)
			b.ReportAllocs()
			var c counter
			c.begin(b)
			for i := 0; i < b.N; i++ {
				got, err := v.write(db)
				if err != nil {
					b.Fatal(err)
				}
				if got != int64(n) {
					b.Fatalf("wrote %d documents, want %d", got, n)
				}
				c.rows += got
			}
			c.report(b)
		})
	}
}
