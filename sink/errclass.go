package sink

import (
	"errors"
	"strings"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"
)

// Class is what a failed INSERT means for its rows. It is decided in this one
// place, by the server's named error codes.
type Class int

const (
	// Retry: the error says nothing about the rows (unknown codes, quotas,
	// memory, too many parts, timeouts, lost connections, a lost lease):
	// the whole batch is retried with backoff. Rows are never marked
	// failed for it. This is the default: when in doubt, deliver.
	Retry Class = iota
	// RowData: the rows' values are at fault (parse and conversion errors,
	// throwIf, a value out of its type's range): the batch is bisected
	// until the offending rows are alone, and those are marked failed.
	RowData
	// TooManyPartitions: the batch spans more partitions than one INSERT
	// may (max_partitions_per_insert_block): it is split, never failed.
	TooManyPartitions
)

func (c Class) String() string {
	switch c {
	case RowData:
		return "row data"
	case TooManyPartitions:
		return "too many partitions"
	}
	return "retry"
}

// rowDataCodes are the server errors known to concern the data of the rows
// being inserted. docs/operations.md (which errors mark rows failed) lists them with the
// reason for each; keep the two in step.
var rowDataCodes = map[proto.Error]bool{
	proto.ErrCannotParseText:                  true, // a value's text is not of the column's type
	proto.ErrCannotParseQuotedString:          true,
	proto.ErrCannotParseInputAssertionFailed:  true,
	proto.ErrCannotParseDate:                  true,
	proto.ErrCannotParseDatetime:              true,
	proto.ErrCannotParseNumber:                true,
	proto.ErrCannotConvertType:                true, // a value that cannot become the column's type
	proto.ErrTypeMismatch:                     true,
	proto.ErrIncorrectData:                    true, // e.g. malformed JSON for a JSON column
	proto.ErrTooLargeStringSize:               true, // a value longer than a FixedString
	proto.ErrValueIsOutOfRangeOfDataType:      true,
	proto.ErrCannotInsertNullInOrdinaryColumn: true,
	proto.ErrFunctionThrowIfValueIsNonZero:    true, // throwIf in a MATERIALIZED column or a view's SELECT
	proto.ErrDecimalOverflow:                  true,
	proto.ErrArgumentOutOfBound:               true, // a function of a row's value out of range
	proto.ErrSizesOfArraysDontMatch:           true,
}

// Classify says what err, returned by an INSERT, means for its rows.
func Classify(err error) Class {
	var de *dataError
	if errors.As(err, &de) {
		return RowData // refused by our own conversion, before anything was sent
	}
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return Retry // network, context, lease: nothing known about the rows
	}
	code := proto.Error(ex.Code)
	switch {
	case code == proto.ErrTooManyParts && strings.Contains(ex.Message, "partitions for single INSERT block"):
		// Current servers raise TOO_MANY_PARTS for both "too many parts"
		// (retry later) and "too many partitions for a single INSERT
		// block" (split the batch); only the message tells them apart.
		return TooManyPartitions
	case rowDataCodes[code]:
		return RowData
	}
	return Retry
}

// Unreachable reports whether err, returned by an INSERT, says that no
// server answered: it is neither the server's own exception (the server is
// up: quotas, too many parts, quorum) nor a refusal by our conversion, so it
// is a refused, reset or timed-out connection. The pipeline retries such an
// insert as soon as a ping answers again.
func Unreachable(err error) bool {
	var de *dataError
	var ex *clickhouse.Exception
	return err != nil && !errors.As(err, &de) && !errors.As(err, &ex)
}

// quorumCodes are the server errors of an INSERT whose quorum
// (insert_quorum on a Replicated* table) is lost: too few replicas alive,
// an earlier quorum insert still unsettled, or the outcome unknown.
var quorumCodes = map[proto.Error]bool{
	proto.ErrTooFewLiveReplicas:                true,
	proto.ErrUnsatisfiedQuorumForPreviousWrite: true,
	proto.ErrReplicaIsNotInQuorum:              true,
	proto.ErrUnknownStatusOfInsert:             true,
}

// QuorumLost reports whether err, returned by an INSERT, says that the
// table's insert quorum cannot be reached: the insert is retried, and the
// instance is not ready (/readyz) until one succeeds.
func QuorumLost(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && quorumCodes[proto.Error(ex.Code)]
}
