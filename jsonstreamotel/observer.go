// Package jsonstreamotel turns jsonstream's stream events into
// OpenTelemetry metrics and span events. Its directory and its name are
// alike, as in opentelemetry-go-contrib (otelhttp, otelsql), and neither
// collides with go.opentelemetry.io/otel.
//
//	observer, err := jsonstreamotel.NewObserver(jsonstreamotel.WithMeterProvider(provider))
//	drv, err := jsonstream.NewDriver(pq.Driver{}, jsonstream.WithObserver(observer))
//
// # Metrics
//
// Every measurement carries jsonstream.mode ("single" or "cursor"); those
// about ended streams also carry jsonstream.outcome (complete, drained,
// cut, cursor_closed, canceled, context, pause_timeout, failed). The names
// follow OpenTelemetry's database client conventions:
//
//	db.client.jsonstream.streams             counter    {stream}     streams that ended, by outcome
//	db.client.jsonstream.streams.open        up-down    {stream}     streams started and not yet closed
//	db.client.jsonstream.streams.paused      up-down    {stream}     streams paused now
//	db.client.jsonstream.rows                counter    {row}        rows delivered, counted when a stream ends
//	db.client.jsonstream.bytes               counter    By           bytes of text and binary values delivered, idem
//	db.client.jsonstream.pauses              counter    {pause}      pauses begun
//	db.client.jsonstream.pause.duration      histogram  s            length of each pause, when it ends
//	db.client.jsonstream.pause.timeouts      counter    {timeout}    pause timeouts that expired
//	db.client.jsonstream.connections.cut     counter    {connection} connections cut to stop a query, by outcome
//	db.client.jsonstream.time_to_first_row   histogram  s            from sending the query to its first row
//
// # Span events
//
// On the span in the query's context (trace.SpanFromContext: the one an
// instrumented database/sql wrapper such as otelsql, or the caller, put
// there), when it is recording: jsonstream.pause, jsonstream.resume and
// jsonstream.pause_timeout, and jsonstream.early_close for a stream that
// ended other than complete, with its outcome.
package jsonstreamotel

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/jsonstream/jsonstream"
)

// ScopeName is the instrumentation scope of the meter.
const ScopeName = "github.com/jsonstream/jsonstream/jsonstreamotel"

// Attribute keys of the measurements and span events.
const (
	// ModeKey is the stream's jsonstream.StreamMode, as in "single".
	ModeKey = attribute.Key("jsonstream.mode")
	// OutcomeKey is how a stream ended, a jsonstream.Outcome, as in "cut".
	OutcomeKey = attribute.Key("jsonstream.outcome")
	// RowsKey is the rows delivered so far, on span events.
	RowsKey = attribute.Key("jsonstream.rows")
	// PauseSecondsKey is the length of a pause in seconds, on span events.
	PauseSecondsKey = attribute.Key("jsonstream.pause.duration")
	// ConnCutKey tells whether the stream's connection was cut, on
	// jsonstream.early_close.
	ConnCutKey = attribute.Key("jsonstream.connection.cut")
)

// durationBuckets are the histogram bounds in seconds: those OpenTelemetry
// recommends for database client durations, stretched to the minutes a
// pause may last.
var durationBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 300}

// Observer is a jsonstream.Observer that records metrics and span events.
// Set it with jsonstream.WithObserver on a connector, a driver or a
// Stream; one Observer serves any number of streams at once.
type Observer struct {
	streams       metric.Int64Counter
	open          metric.Int64UpDownCounter
	paused        metric.Int64UpDownCounter
	rows          metric.Int64Counter
	bytes         metric.Int64Counter
	pauses        metric.Int64Counter
	pauseDuration metric.Float64Histogram
	pauseTimeouts metric.Int64Counter
	connsCut      metric.Int64Counter
	firstRow      metric.Float64Histogram
	resumes       metric.Int64Counter
	resumeTime    metric.Float64Histogram

	// The attribute sets, built once with their option slices: passing an
	// option by itself would allocate its variadic slice per measurement.
	byMode    [jsonstream.ModeCursor + 1]attrs
	byOutcome [jsonstream.ModeCursor + 1][jsonstream.OutcomeFailed + 1]attrs
	extra     []attribute.KeyValue
}

// attrs is one attribute set as the options of Add and Record.
type attrs struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

var _ jsonstream.Observer = (*Observer)(nil)

type config struct {
	provider metric.MeterProvider
	extra    []attribute.KeyValue
}

// Option configures NewObserver.
type Option func(*config) error

// WithMeterProvider sets the MeterProvider; the default is the global one
// (otel.GetMeterProvider).
func WithMeterProvider(p metric.MeterProvider) Option {
	return func(c *config) error {
		if p == nil {
			return fmt.Errorf("%w: jsonstreamotel.WithMeterProvider(nil)", jsonstream.ErrInvalidOption)
		}
		c.provider = p
		return nil
	}
}

// WithAttributes adds attributes to every measurement, such as
// db.system.name or server.address.
func WithAttributes(kv ...attribute.KeyValue) Option {
	return func(c *config) error {
		c.extra = append(c.extra, kv...)
		return nil
	}
}

// NewObserver creates the instruments. A bad option is an error wrapping
// jsonstream.ErrInvalidOption.
func NewObserver(opts ...Option) (*Observer, error) {
	c := config{provider: otel.GetMeterProvider()}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil jsonstreamotel.Option", jsonstream.ErrInvalidOption)
		}
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	m := c.provider.Meter(ScopeName)
	o := &Observer{extra: c.extra}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		i, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	upDown := func(name, unit, desc string) metric.Int64UpDownCounter {
		i, err := m.Int64UpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		i, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(durationBuckets...))
		errs = append(errs, err)
		return i
	}
	o.streams = counter("db.client.jsonstream.streams", "{stream}", "Streams that ended, by outcome.")
	o.open = upDown("db.client.jsonstream.streams.open", "{stream}", "Streams started and not yet closed.")
	o.paused = upDown("db.client.jsonstream.streams.paused", "{stream}", "Streams paused now.")
	o.rows = counter("db.client.jsonstream.rows", "{row}", "Rows delivered by the streams that ended.")
	o.bytes = counter("db.client.jsonstream.bytes", "By", "Bytes of text and binary values delivered by the streams that ended.")
	o.pauses = counter("db.client.jsonstream.pauses", "{pause}", "Pauses begun.")
	o.pauseDuration = histogram("db.client.jsonstream.pause.duration", "Length of each pause, recorded when it ends.")
	o.pauseTimeouts = counter("db.client.jsonstream.pause.timeouts", "{timeout}", "Pause timeouts that expired.")
	o.connsCut = counter("db.client.jsonstream.connections.cut", "{connection}", "Connections cut to stop a server-side query.")
	o.firstRow = histogram("db.client.jsonstream.time_to_first_row", "Time from sending the query to its first row.")
	o.resumes = counter("db.client.jsonstream.resumes", "{resume}", "Continuations of resumable streams after a failure.")
	o.resumeTime = histogram("db.client.jsonstream.resume.duration", "Time from a resumable stream's failure to its continuation's first row.")
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	for mode := range o.byMode {
		o.byMode[mode] = o.attributes(jsonstream.StreamMode(mode), nil)
		for outcome := range o.byOutcome[mode] {
			oc := jsonstream.Outcome(outcome)
			o.byOutcome[mode][outcome] = o.attributes(jsonstream.StreamMode(mode), &oc)
		}
	}
	return o, nil
}

func (o *Observer) attributes(mode jsonstream.StreamMode, outcome *jsonstream.Outcome) attrs {
	kv := append([]attribute.KeyValue{ModeKey.String(mode.String())}, o.extra...)
	if outcome != nil {
		kv = append(kv, OutcomeKey.String(outcome.String()))
	}
	set := metric.WithAttributeSet(attribute.NewSet(kv...))
	return attrs{add: []metric.AddOption{set}, record: []metric.RecordOption{set}}
}

func (o *Observer) modeAttrs(m jsonstream.StreamMode) attrs {
	if int(m) < len(o.byMode) {
		return o.byMode[m]
	}
	return o.attributes(m, nil)
}

func (o *Observer) outcomeAttrs(m jsonstream.StreamMode, oc jsonstream.Outcome) attrs {
	if int(m) < len(o.byOutcome) && int(oc) < len(o.byOutcome[m]) {
		return o.byOutcome[m][oc]
	}
	return o.attributes(m, &oc)
}

// ObserveStream implements jsonstream.Observer.
func (o *Observer) ObserveStream(e jsonstream.Event) {
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	a := o.modeAttrs(e.Mode)
	span := trace.SpanFromContext(ctx)
	recording := span.IsRecording()
	switch e.Kind {
	case jsonstream.EventStarted:
		o.open.Add(ctx, 1, a.add...)
	case jsonstream.EventFirstRow:
		o.firstRow.Record(ctx, e.Stats.FirstRow.Seconds(), a.record...)
	case jsonstream.EventPaused:
		o.pauses.Add(ctx, 1, a.add...)
		o.paused.Add(ctx, 1, a.add...)
		if recording {
			span.AddEvent("jsonstream.pause", trace.WithAttributes(RowsKey.Int64(e.Stats.Rows)))
		}
	case jsonstream.EventResumed:
		o.paused.Add(ctx, -1, a.add...)
		o.pauseDuration.Record(ctx, e.Paused.Seconds(), a.record...)
		if recording {
			span.AddEvent("jsonstream.resume", trace.WithAttributes(PauseSecondsKey.Float64(e.Paused.Seconds())))
		}
	case jsonstream.EventPauseTimeout:
		o.pauseTimeouts.Add(ctx, 1, a.add...)
		if recording {
			span.AddEvent("jsonstream.pause_timeout", trace.WithAttributes(PauseSecondsKey.Float64(e.Paused.Seconds())))
		}
	case jsonstream.EventContinued:
		o.resumes.Add(ctx, 1, a.add...)
		o.resumeTime.Record(ctx, e.Continued.Seconds(), a.record...)
		if recording {
			span.AddEvent("jsonstream.continued", trace.WithAttributes(
				RowsKey.Int64(e.Stats.Rows), attribute.String("error", e.Err.Error())))
		}
	case jsonstream.EventEnded:
		o.open.Add(ctx, -1, a.add...)
		if e.EndedPaused {
			o.paused.Add(ctx, -1, a.add...)
			o.pauseDuration.Record(ctx, e.Paused.Seconds(), a.record...)
		}
		ended := o.outcomeAttrs(e.Mode, e.Outcome)
		o.streams.Add(ctx, 1, ended.add...)
		o.rows.Add(ctx, e.Stats.Rows, ended.add...)
		o.bytes.Add(ctx, e.Stats.Bytes, ended.add...)
		if e.ConnCut {
			o.connsCut.Add(ctx, 1, ended.add...)
		}
		if recording && e.Outcome != jsonstream.OutcomeComplete {
			span.AddEvent("jsonstream.early_close", trace.WithAttributes(
				OutcomeKey.String(e.Outcome.String()),
				RowsKey.Int64(e.Stats.Rows),
				ConnCutKey.Bool(e.ConnCut)))
		}
	}
}
