// Custom search attributes: the Web UI's workflow list can be filtered by runbook, target, step and state.
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const searchAttributes = {
  runbook: defineSearchAttributeKey('FermataRunbook', SearchAttributeType.KEYWORD),
  target: defineSearchAttributeKey('FermataTarget', SearchAttributeType.KEYWORD),
  step: defineSearchAttributeKey('FermataStep', SearchAttributeType.KEYWORD),
  state: defineSearchAttributeKey('FermataState', SearchAttributeType.KEYWORD),
};
