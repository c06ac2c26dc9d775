package bench

import (
	"context"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/dataset"
)

// typedEntity is a document as an application decodes it: dataset.Entity
// with its creation time parsed, so that every decoder also runs
// time.Time's decoding.
type typedEntity struct {
	ID        int64           `json:"id"`
	Name      string          `json:"name"`
	Email     string          `json:"email"`
	Active    bool            `json:"active"`
	Score     float64         `json:"score"`
	Version   int             `json:"version"`
	Tags      []string        `json:"tags"`
	CreatedAt time.Time       `json:"created_at"`
	Address   dataset.Address `json:"address"`
}

// typedSize is the result size of BenchmarkTypedDecode.
func typedSize(env *pgEnv) int {
	if testing.Short() {
		return min(1_000, env.rows)
	}
	return min(300_000, env.rows)
}

// eachOptions returns the options that make Each decode with d.
func eachOptions(d Decoder) []jsonstream.JSONOption {
	if d.Unmarshal == nil {
		return nil
	}
	return []jsonstream.JSONOption{jsonstream.WithUnmarshal(d.Unmarshal)}
}

// BenchmarkTypedDecode protects what jsonstream.Each[T] costs over reading
// the documents at all: decoder=raw reads them as sql.RawBytes through
// jsonstream and decodes nothing; the others decode each into a
// typedEntity with Each, with encoding/json (the default) or the decoder
// given with WithUnmarshal. The number is each decoder's rows/s over
// raw's (and cpu-ns/row, steadier on a busy machine); allocs/row and
// B/row are the decoder's garbage.
func BenchmarkTypedDecode(b *testing.B) {
	env := setup(b)
	ctx := context.Background()
	n := typedSize(env)
	query := dataset.Select(env.table, n)
	run := func(b *testing.B, read func(db SQLConn, query string) (int, float64, error)) {
		db := open(b, clientNamed(Jsonstream), env).(SQLConn)
		// Decoders prepare for a type on first use (sonic compiles code
		// for it): one document first, off the clock.
		if _, _, err := read(db, dataset.Select(env.table, 1)); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		var c counter
		var sum float64
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		c.begin(b)
		for i := 0; i < b.N; i++ {
			got, s, err := read(db, query)
			if err != nil {
				b.Fatal(err)
			}
			if got != n {
				b.Fatalf("read %d rows, want %d", got, n)
			}
			sum += s
			c.rows += int64(got)
		}
		c.report(b)
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(c.rows), "B/row")
		sink = sum
	}
	b.Run("decoder="+RawDrain, func(b *testing.B) {
		run(b, func(db SQLConn, query string) (int, float64, error) {
			got := 0
			var size float64
			err := db.Stream(ctx, query, func(data []byte) bool {
				got++
				size += float64(len(data))
				return true
			})
			return got, size, err
		})
	})
	for _, d := range Decoders {
		opts := eachOptions(d)
		b.Run("decoder="+d.Name, func(b *testing.B) {
			run(b, func(db SQLConn, query string) (int, float64, error) {
				rows, err := db.DB.QueryContext(ctx, query)
				if err != nil {
					return 0, 0, err
				}
				got := 0
				var sum float64
				for e, err := range jsonstream.Each[typedEntity](rows, opts...) {
					if err != nil {
						return got, sum, err
					}
					sum += e.Score
					got++
				}
				return got, sum, nil
			})
		})
	}
}

// decodeSampleSize is how many documents TestTypedDecodersAgree decodes:
// more than the longest cycle of values in the dataset (840 documents).
const decodeSampleSize = ShortRows

// TestTypedDecodersAgree checks that BenchmarkTypedDecode compares equal
// work: through Each, every decoder yields the same typedEntity values as
// encoding/json for the first documents of the dataset, and those values
// have every field set, so that no decoder can agree by skipping one.
func TestTypedDecodersAgree(t *testing.T) {
	env := setupSample(t, decodeSampleSize)
	ctx := context.Background()
	conn, err := clientNamed(Jsonstream).Open(ctx, env.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	db := conn.(SQLConn).DB
	n := min(decodeSampleSize, env.rows)
	query := dataset.Select(env.table, n)

	decode := func(d Decoder) []typedEntity {
		t.Helper()
		rows, err := db.QueryContext(ctx, query)
		if err != nil {
			t.Fatal(err)
		}
		var all []typedEntity
		for e, err := range jsonstream.Each[typedEntity](rows, eachOptions(d)...) {
			if err != nil {
				t.Fatalf("%s: %v", d.Name, err)
			}
			all = append(all, e)
		}
		if len(all) != n {
			t.Fatalf("%s: decoded %d documents, want %d", d.Name, len(all), n)
		}
		return all
	}

	want := decode(Decoder{Name: EncodingJSON})
	for i, e := range want {
		a := e.Address
		if e.ID != int64(i+1) || e.Name == "" || e.Email == "" || e.Score == 0 || e.Version == 0 ||
			len(e.Tags) != 2 || e.CreatedAt.IsZero() || a.Street == "" || a.City == "" || a.Country == "" || a.Postcode == "" {
			t.Fatalf("encoding/json left a field of document %d unset: %+v", i+1, e)
		}
	}
	for _, d := range Decoders {
		if d.Name == EncodingJSON {
			continue
		}
		got := decode(d)
		for i := range want {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Errorf("%s, document %d:\n got %+v\nwant %+v", d.Name, i+1, got[i], want[i])
				break
			}
		}
		t.Logf("%s agrees with encoding/json on %d documents", d.Name, n)
	}
}
