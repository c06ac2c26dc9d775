package jsonstreamotel_test

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/internal/pgtest"
	"github.com/jsonstream/jsonstream/jsonstreamotel"
)

// TestMain starts a throwaway PostgreSQL on first use (or uses
// JSONSTREAM_TEST_DSN), stops it afterwards and fails the run if
// goroutines leaked.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// openDB is the README's wiring: jsonstream's metrics into a
// MeterProvider.
func openDB(dsn string, meterProvider metric.MeterProvider) (*sql.DB, error) {
	observer, err := jsonstreamotel.NewObserver(jsonstreamotel.WithMeterProvider(meterProvider))
	if err != nil {
		return nil, err
	}
	drv, err := jsonstream.NewDriver(pq.Driver{}, jsonstream.WithObserver(observer))
	if err != nil {
		return nil, err
	}
	connector, err := drv.OpenConnector(dsn) // any lib/pq DSN
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(connector), nil
}

// bigQuery streams $1 rows of an int and 100 bytes of text: far more
// than a drain of a few milliseconds reads.
const bigQuery = `SELECT g, repeat('x', 100) FROM generate_series(1, $1) g`

// padBytes is what Stats.Bytes counts per row of bigQuery: the text.
const padBytes = 100

type harness struct {
	db     *sql.DB
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tracer *sdktrace.TracerProvider
}

// newHarness runs its streams in the single-statement mode, whose
// endings the scripted tests name.
func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessDSN(t, dsnWith(t, pgtest.DSN(t), "jsonstream_mode", "single"))
}

// newHarnessDSN is newHarness on a DSN of the caller's, such as one that
// sets jsonstream_fetch_size.
func newHarnessDSN(t *testing.T, dsn string) *harness {
	t.Helper()
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = h.tracer.Shutdown(context.Background())
	})
	db, err := openDB(dsn, mp)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	h.db = db
	return h
}

func (h *harness) collect(t *testing.T) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != jsonstreamotel.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sum adds up the data points of an int64 sum whose attributes include
// every one of want.
func sum(t *testing.T, data map[string]metricdata.Aggregation, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	agg, ok := data[name]
	if !ok {
		return 0
	}
	s, ok := agg.(metricdata.Sum[int64])
	require.True(t, ok, "%s is a %T", name, agg)
	var n int64
	for _, dp := range s.DataPoints {
		if hasAll(dp.Attributes, want) {
			n += dp.Value
		}
	}
	return n
}

func histogram(t *testing.T, data map[string]metricdata.Aggregation, name string) metricdata.HistogramDataPoint[float64] {
	t.Helper()
	h, ok := data[name].(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a %T", name, data[name])
	require.Len(t, h.DataPoints, 1, name)
	return h.DataPoints[0]
}

func hasAll(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

var single = jsonstreamotel.ModeKey.String("single")

func outcome(o jsonstream.Outcome) attribute.KeyValue {
	return jsonstreamotel.OutcomeKey.String(o.String())
}

// TestScriptedStreams runs three streams against PostgreSQL: one paused
// three times, the last pause timing out; one closed early, which cuts
// its connection; one read to the end. Every metric and span event must
// tell what happened.
func TestScriptedStreams(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tracer := h.tracer.Tracer("test")
	const pauseTimeout = 300 * time.Millisecond
	begin := time.Now()

	// Stream A: three pauses, the third times out.
	ctxA, spanA := tracer.Start(ctx, "stream A")
	a, err := jsonstream.NewStream(jsonstream.WithPauseTimeout(pauseTimeout))
	require.NoError(t, err)
	rows, err := h.db.QueryContext(ctxA, bigQuery, 1_000_000, a)
	require.NoError(t, err)
	read := func(rows *sql.Rows, n int) {
		for i := 0; i < n; i++ {
			require.True(t, rows.Next(), "row %d: %v", i, rows.Err())
		}
	}
	read(rows, 10)
	for i := 0; i < 2; i++ {
		require.NoError(t, a.Pause())
		if i == 0 {
			mid := h.collect(t)
			assert.Equal(t, int64(1), sum(t, mid, "db.client.jsonstream.streams.open", single), "open while A runs")
			assert.Equal(t, int64(1), sum(t, mid, "db.client.jsonstream.streams.paused", single), "paused while A is")
		}
		time.Sleep(20 * time.Millisecond)
		require.NoError(t, a.Resume())
		read(rows, 10)
	}
	require.NoError(t, a.Pause())
	assert.False(t, rows.Next())
	require.ErrorIs(t, rows.Err(), jsonstream.ErrPauseTimeout)
	require.NoError(t, rows.Close())
	spanA.End()

	// Stream B: closed after 5 of a million rows; CloseAuto cuts.
	ctxB, spanB := tracer.Start(ctx, "stream B")
	b, err := jsonstream.NewStream()
	require.NoError(t, err)
	rows, err = h.db.QueryContext(ctxB, bigQuery, 1_000_000, b)
	require.NoError(t, err)
	read(rows, 5)
	require.NoError(t, rows.Close())
	spanB.End()

	// Stream C: read to the end.
	ctxC, spanC := tracer.Start(ctx, "stream C")
	c, err := jsonstream.NewStream()
	require.NoError(t, err)
	rows, err = h.db.QueryContext(ctxC, bigQuery, 3, c)
	require.NoError(t, err)
	for rows.Next() {
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	spanC.End()
	elapsed := time.Since(begin)

	streams := []*jsonstream.Stream{a, b, c}
	var wantRows, wantBytes int64
	for _, s := range streams {
		wantRows += s.Stats().Rows
		wantBytes += s.Stats().Bytes
	}
	require.Equal(t, int64(30+5+3), wantRows, "the script read what it meant to")
	require.Equal(t, wantRows*padBytes, wantBytes)

	m := h.collect(t)
	assert.Equal(t, int64(3), sum(t, m, "db.client.jsonstream.streams", single))
	for _, tc := range []struct {
		outcome jsonstream.Outcome
		s       *jsonstream.Stream
	}{
		{jsonstream.OutcomePauseTimeout, a},
		{jsonstream.OutcomeCut, b},
		{jsonstream.OutcomeComplete, c},
	} {
		assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.streams", single, outcome(tc.outcome)), "streams %v", tc.outcome)
		assert.Equal(t, tc.s.Stats().Rows, sum(t, m, "db.client.jsonstream.rows", outcome(tc.outcome)), "rows %v", tc.outcome)
	}
	assert.Equal(t, wantRows, sum(t, m, "db.client.jsonstream.rows", single))
	assert.Equal(t, wantBytes, sum(t, m, "db.client.jsonstream.bytes", single))
	assert.Equal(t, int64(3), sum(t, m, "db.client.jsonstream.pauses", single))
	assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.pause.timeouts", single))
	assert.Equal(t, int64(2), sum(t, m, "db.client.jsonstream.connections.cut", single), "A by its pause timeout, B by its early close")
	assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.connections.cut", outcome(jsonstream.OutcomePauseTimeout)))
	assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.connections.cut", outcome(jsonstream.OutcomeCut)))
	assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.streams.open", single), "all closed")
	assert.Equal(t, int64(0), sum(t, m, "db.client.jsonstream.streams.paused", single), "none paused")

	pauses := histogram(t, m, "db.client.jsonstream.pause.duration")
	assert.Equal(t, uint64(3), pauses.Count)
	minPause, _ := pauses.Min.Value()
	maxPause, _ := pauses.Max.Value()
	assert.GreaterOrEqual(t, minPause, 0.020, "the shortest pause slept 20 ms")
	assert.GreaterOrEqual(t, maxPause, pauseTimeout.Seconds(), "the longest pause is the one that timed out")
	assert.InDelta(t, a.Stats().PausedTotal.Seconds(), pauses.Sum, 1e-6)

	firstRow := histogram(t, m, "db.client.jsonstream.time_to_first_row")
	assert.Equal(t, uint64(3), firstRow.Count)
	var wantFirst float64
	for _, s := range streams {
		wantFirst += s.Stats().FirstRow.Seconds()
	}
	assert.InDelta(t, wantFirst, firstRow.Sum, 1e-6)
	assert.Less(t, firstRow.Sum, elapsed.Seconds())

	events := map[string][]sdktrace.Event{}
	for _, s := range h.spans.Ended() {
		events[s.Name()] = s.Events()
	}
	var namesA []string
	for _, e := range events["stream A"] {
		namesA = append(namesA, e.Name)
	}
	assert.Equal(t, []string{
		"jsonstream.pause", "jsonstream.resume",
		"jsonstream.pause", "jsonstream.resume",
		"jsonstream.pause", "jsonstream.pause_timeout",
		"jsonstream.early_close",
	}, namesA)
	if n := len(events["stream A"]); n > 0 {
		closeA := attribute.NewSet(events["stream A"][n-1].Attributes...)
		assert.True(t, hasAll(closeA, []attribute.KeyValue{
			outcome(jsonstream.OutcomePauseTimeout), jsonstreamotel.ConnCutKey.Bool(true),
			jsonstreamotel.RowsKey.Int64(30),
		}), "%v", closeA.Encoded(attribute.DefaultEncoder()))
	}
	if assert.Len(t, events["stream B"], 1) {
		e := events["stream B"][0]
		assert.Equal(t, "jsonstream.early_close", e.Name)
		assert.True(t, hasAll(attribute.NewSet(e.Attributes...), []attribute.KeyValue{
			outcome(jsonstream.OutcomeCut), jsonstreamotel.ConnCutKey.Bool(true),
		}))
	}
	assert.Empty(t, events["stream C"], "a complete stream adds no event")
}

func TestNewObserverRejectsBadOptions(t *testing.T) {
	_, err := jsonstreamotel.NewObserver(jsonstreamotel.WithMeterProvider(nil))
	require.ErrorIs(t, err, jsonstream.ErrInvalidOption)
	assert.Contains(t, err.Error(), "WithMeterProvider")
	_, err = jsonstreamotel.NewObserver(nil)
	require.ErrorIs(t, err, jsonstream.ErrInvalidOption)
}

// TestResumeMetrics: a resumable stream that gets past the end of its
// session counts one resume and records how long it took, and its span
// gets a jsonstream.continued event; it ends once, complete, with all its
// rows counted.
func TestResumeMetrics(t *testing.T) {
	h := newHarnessDSN(t, pgtest.DSN(t)) // the default mode: portal streams
	ctx, span := h.tracer.Tracer("test").Start(context.Background(), "resumed")
	monitor, err := sql.Open("postgres", pgtest.DSN(t))
	require.NoError(t, err)
	defer monitor.Close()
	conn, err := h.db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	var pid int
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	s, err := jsonstream.NewStream(jsonstream.WithResumeKey(jsonstream.Asc("g")))
	require.NoError(t, err)
	rows, err := conn.QueryContext(ctx, "SELECT g FROM generate_series(1, 100000) g ORDER BY g", s)
	require.NoError(t, err)
	n := 0
	for rows.Next() {
		if n++; n == 100 {
			_, err := monitor.Exec("SELECT pg_terminate_backend($1)", pid)
			require.NoError(t, err)
		}
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	span.End()
	assert.Equal(t, 100000, n)
	m := h.collect(t)
	assert.Equal(t, int64(1), sum(t, m, "db.client.jsonstream.resumes"))
	assert.Equal(t, uint64(1), histogram(t, m, "db.client.jsonstream.resume.duration").Count)
	// With the QueryRow that asked for the pid: one stream each.
	assert.Equal(t, int64(100000+1), sum(t, m, "db.client.jsonstream.rows", outcome(jsonstream.OutcomeComplete)))
	assert.Equal(t, int64(2), sum(t, m, "db.client.jsonstream.streams", outcome(jsonstream.OutcomeComplete)))
	var names []string
	for _, e := range h.spans.Ended()[0].Events() {
		names = append(names, e.Name)
	}
	assert.Contains(t, names, "jsonstream.continued")
}
