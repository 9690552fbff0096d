// How the worker reads payloads: the SDK's defaults, plus the Web UI's "json/protobuf" encoding.
// The UI's Start Workflow and Send a Signal forms offer json/plain and json/protobuf; both send the
// JSON typed into the form. With the defaults alone a json/protobuf input leaves the run stuck on
// a workflow task that fails again and again ("Unknown encoding"); read as JSON, it reaches the
// runbook's input schema, which accepts it or fails the run at once naming the field and the rule.
// Loaded inside the workflow sandbox too (payloadConverterPath): @temporalio/common only.
import {
  BinaryPayloadConverter,
  CompositePayloadConverter,
  JsonPayloadConverter,
  UndefinedPayloadConverter,
  type Payload,
  type PayloadConverterWithEncoding,
} from '@temporalio/common';

/** Reads json/protobuf payloads whose data is plain JSON, as the UI sends them; never writes one. */
class FormJsonPayloadConverter implements PayloadConverterWithEncoding {
  readonly encodingType = 'json/protobuf';
  private readonly json = new JsonPayloadConverter();

  toPayload(): Payload | undefined {
    return undefined;
  }

  fromPayload<T>(payload: Payload): T {
    return this.json.fromPayload<T>(payload);
  }
}

export const payloadConverter = new CompositePayloadConverter(
  new UndefinedPayloadConverter(),
  new BinaryPayloadConverter(),
  new JsonPayloadConverter(),
  new FormJsonPayloadConverter(),
);
