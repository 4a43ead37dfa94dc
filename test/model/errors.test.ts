import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as errors from '../../lib/model/errors.js';

const classes = [
  [errors.NotFoundError, 'ERR_NOT_FOUND', errors.isNotFound],
  [errors.AlreadyExistsError, 'ERR_ALREADY_EXISTS', errors.isAlreadyExists],
  [errors.FailedPreconditionError, 'ERR_FAILED_PRECONDITION', errors.isFailedPrecondition],
  [errors.InvalidArgumentError, 'ERR_INVALID_ARGUMENT', errors.isInvalidArgument],
  [errors.UnavailableError, 'ERR_UNAVAILABLE', errors.isUnavailable],
] as const;

test('each error class has its stable code, name and predicate, and is a SnapshotterError of exactly one kind', () => {
  for (const [Cls, code, is] of classes) {
    const err = new Cls('message', { cause: 'why' });
    assert.equal(err.code, code);
    assert.equal(err.name, Cls.name);
    assert.equal(err.cause, 'why');
    assert.ok(err instanceof errors.SnapshotterError);
    assert.ok(err instanceof Error);
    assert.ok(is(err));
    for (const [Other, otherCode, otherIs] of classes) {
      if (otherCode === code) continue;
      assert.ok(!(err instanceof Other), `${Cls.name} is not a ${Other.name}`);
      assert.ok(!otherIs(err));
    }
  }
});

test('instanceof and predicates work across two copies of the module', async () => {
  const copy = (await import(`../../lib/model/errors.ts?copy=${Date.now()}`)) as typeof errors;
  assert.notEqual(copy.NotFoundError, errors.NotFoundError, 'a second copy was loaded');
  const foreign = new copy.NotFoundError('from the other copy');
  assert.ok(foreign instanceof errors.NotFoundError);
  assert.ok(foreign instanceof errors.SnapshotterError);
  assert.ok(!(foreign instanceof errors.AlreadyExistsError));
  assert.ok(errors.isNotFound(foreign));
  assert.ok(new errors.UnavailableError('x') instanceof copy.UnavailableError);
});

test('plain errors and look-alikes are not SnapshotterErrors', () => {
  const fake = Object.assign(new Error('x'), { code: 'ERR_NOT_FOUND' });
  assert.ok(!errors.isNotFound(fake));
  assert.ok(!(fake instanceof errors.NotFoundError));
  assert.ok(!errors.isNotFound(null));
  assert.ok(!errors.isNotFound('ERR_NOT_FOUND'));
});
