package jsonstreamotel_test

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/jsonstream/jsonstream"
	"github.com/jsonstream/jsonstream/jsonstreamotel"
)

// BenchmarkObserveStream is what the Observer costs a never-paused query
// (its started, first-row and ended events) and a pause and resume, with
// the OpenTelemetry SDK recording and no span in the context: the figure
// to add to BenchmarkOverhead's jsonstream-observed.
func BenchmarkObserveStream(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	o, err := jsonstreamotel.NewObserver(jsonstreamotel.WithMeterProvider(mp))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	stats := jsonstream.Stats{Rows: 100, Bytes: 30_000, FirstRow: time.Millisecond}
	query := []jsonstream.Event{
		{Kind: jsonstream.EventStarted, Context: ctx},
		{Kind: jsonstream.EventFirstRow, Context: ctx, Stats: stats},
		{Kind: jsonstream.EventEnded, Context: ctx, Stats: stats, Outcome: jsonstream.OutcomeComplete},
	}
	pause := []jsonstream.Event{
		{Kind: jsonstream.EventPaused, Context: ctx, Stats: stats},
		{Kind: jsonstream.EventResumed, Context: ctx, Stats: stats, Paused: time.Millisecond},
	}
	for name, events := range map[string][]jsonstream.Event{"query": query, "pause": pause} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := processCPU()
			for i := 0; i < b.N; i++ {
				for _, e := range events {
					o.ObserveStream(e)
				}
			}
			// CPU time resists other processes' load better than ns/op.
			if cpu := processCPU() - cpu; cpu > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
