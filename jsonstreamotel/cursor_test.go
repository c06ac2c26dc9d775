package jsonstreamotel_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/pgtest"
	"github.com/jsonstream/jsonstream/jsonstreamotel"
)

// The metrics and span events of cursor-backed streams (WithFetchSize),
// configured both ways a user may: a DSN parameter on the connector, or an
// option on one Stream.

var cursor = jsonstreamotel.ModeKey.String("cursor")

// dsnWith adds a jsonstream DSN parameter such as jsonstream_fetch_size=auto
// to dsn, in either of lib/pq's forms: JSONSTREAM_TEST_DSN may be a URL.
func dsnWith(t *testing.T, dsn, name, value string) string {
	t.Helper()
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return dsn + " " + name + "=" + value
	}
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	q := u.Query()
	q.Set(name, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// spanEvents returns the events of the ended spans, by span name.
func spanEvents(h *harness) map[string][]sdktrace.Event {
	events := map[string][]sdktrace.Event{}
	for _, s := range h.spans.Ended() {
		events[s.Name()] = s.Events()
	}
	return events
}

// TestCursorStreamComplete reads a cursor-backed stream to its end, across
// several FETCH batches: every measurement carries mode cursor and outcome
// complete, nothing is counted as single or as a cut, and the span gets no
// event.
func TestCursorStreamComplete(t *testing.T) {
	const n = 250 // more than one batch of 100, and than FetchAuto's 16+32+64+128
	for _, tc := range []struct {
		name  string
		fetch string // jsonstream_fetch_size in the DSN, if any
		opts  []jsonstream.Option
	}{
		{"dsn auto", "auto", nil},
		{"dsn 100", "100", nil},
		{"WithFetchSize", "", []jsonstream.Option{jsonstream.WithFetchSize(100)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pgtest.DSN(t)
			if tc.fetch != "" {
				dsn = dsnWith(t, dsn, "jsonstream_fetch_size", tc.fetch)
			}
			h := newHarnessDSN(t, dsn)
			ctx, span := h.tracer.Tracer("test").Start(context.Background(), "stream")
			s, err := jsonstream.NewStream(tc.opts...)
			require.NoError(t, err)
			rows, err := h.db.QueryContext(ctx, bigQuery, n, s)
			require.NoError(t, err)
			require.True(t, rows.Next(), rows.Err())
			mid := h.collect(t)
			assert.Equal(t, int64(1), sum(t, mid, "db.client.jsonstream.streams.open", cursor), "open while the stream runs")
			assert.Equal(t, int64(0), sum(t, mid, "db.client.jsonstream.streams.open", single), "open in single mode")
			for rows.Next() {
			}
			require.NoError(t, rows.Err())
			require.NoError(t, rows.Close())
			span.End()
			require.Equal(t, int64(n), s.Stats().Rows, "the stream read every row")

			m := h.collect(t)
			complete := outcome(jsonstream.OutcomeComplete)
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams"), "streams of any mode")
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", cursor, complete))
			assert.Equal(t, int64(n), sum(t, m, "db.client.jsonstream.rows", cursor, complete))
			assert.Equal(t, int64(n*padBytes), sum(t, m, "db.client.jsonstream.bytes", cursor, complete))
			assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.streams.open", cursor), "closed")
			assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.connections.cut"), "cuts of any mode")
			firstRow := histogram(t, m, "db.client.jsonstream.time_to_first_row")
			assert.Equal(t, uint64(1), firstRow.Count)
			assert.True(t, hasAll(firstRow.Attributes, []attribute.KeyValue{cursor}), "%v", firstRow.Attributes.Encoded(attribute.DefaultEncoder()))
			assert.InDelta(t, s.Stats().FirstRow.Seconds(), firstRow.Sum, 1e-6)

			events := spanEvents(h)
			require.Contains(t, events, "stream")
			assert.Empty(t, events["stream"], "a complete stream adds no event")
		})
	}
}

// TestCursorEarlyCloseIsNotACut closes three streams after 5 of a million
// rows on one connector, a cursor-backed one, a single-statement one and
// a portal one beside it: the cursor's ends as cursor_closed in mode
// cursor without a connection cut, the single one's as cut in mode single
// with one, the portal's as portal_closed in mode portal without, in the
// metrics and in each span's early_close event.
func TestCursorEarlyCloseIsNotACut(t *testing.T) {
	const read = 5
	for _, fetch := range []string{"auto", "100"} {
		t.Run("fetch_size="+fetch, func(t *testing.T) {
			// The connector is in cursor mode; the single stream opts out.
			h := newHarnessDSN(t, dsnWith(t, pgtest.DSN(t), "jsonstream_fetch_size", fetch))
			tracer := h.tracer.Tracer("test")
			closeEarly := func(spanName string, opts ...jsonstream.Option) {
				t.Helper()
				ctx, span := tracer.Start(context.Background(), spanName)
				defer span.End()
				s, err := jsonstream.NewStream(opts...)
				require.NoError(t, err)
				rows, err := h.db.QueryContext(ctx, bigQuery, 1_000_000, s)
				require.NoError(t, err)
				for i := 0; i < read; i++ {
					require.True(t, rows.Next(), "row %d: %v", i, rows.Err())
				}
				require.NoError(t, rows.Close())
				require.Equal(t, int64(read), s.Stats().Rows)
			}
			closeEarly("cursor")
			closeEarly("single", jsonstream.WithStreamMode(jsonstream.ModeSingle))
			closeEarly("portal", jsonstream.WithStreamMode(jsonstream.ModePortal))

			m := h.collect(t)
			cursorClosed, cut := outcome(jsonstream.OutcomeCursorClosed), outcome(jsonstream.OutcomeCut)
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", cursor), "cursor streams")
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", cursor, cursorClosed))
			assert.Equal(t, int64(read), sum(t, m, "db.client.jsonstream.rows", cursor, cursorClosed))
			assert.Equal(t, int64(read*padBytes), sum(t, m, "db.client.jsonstream.bytes", cursor, cursorClosed))
			assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.connections.cut", cursor), "a cursor's early close keeps its connection")

			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", single), "single streams")
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", single, cut))
			assert.Equal(t, int64(read), sum(t, m, "db.client.jsonstream.rows", single, cut))
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.connections.cut", single, cut), "a single stream's early close cuts")
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.connections.cut"), "cuts of any mode")
			portal, portalClosed := jsonstreamotel.ModeKey.String("portal"), outcome(jsonstream.OutcomePortalClosed)
			assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", portal, portalClosed), "portal streams")
			assert.Equal(t, int64(read), sum(t, m, "db.client.jsonstream.rows", portal, portalClosed))

			assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.streams.open"), "all closed")

			events := spanEvents(h)
			for _, tc := range []struct {
				span string
				want []attribute.KeyValue
			}{
				{"cursor", []attribute.KeyValue{cursorClosed, jsonstreamotel.RowsKey.Int64(read), jsonstreamotel.ConnCutKey.Bool(false)}},
				{"single", []attribute.KeyValue{cut, jsonstreamotel.RowsKey.Int64(read), jsonstreamotel.ConnCutKey.Bool(true)}},
				{"portal", []attribute.KeyValue{outcome(jsonstream.OutcomePortalClosed), jsonstreamotel.RowsKey.Int64(read), jsonstreamotel.ConnCutKey.Bool(false)}},
			} {
				if assert.Len(t, events[tc.span], 1, tc.span) {
					e := events[tc.span][0]
					assert.Equal(t, "jsonstream.early_close", e.Name, tc.span)
					got, want := attribute.NewSet(e.Attributes...), attribute.NewSet(tc.want...)
					assert.True(t, got.Equals(&want), "%s: got %s, want %s", tc.span,
						got.Encoded(attribute.DefaultEncoder()), want.Encoded(attribute.DefaultEncoder()))
				}
			}
		})
	}
}
