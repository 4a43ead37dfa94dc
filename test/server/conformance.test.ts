/**
 * The whole conformance suite once more through the wire: every scenario
 * calls a gRPC client of our server, which calls the library.
 */
import { throughGrpc } from '../helpers/grpc.js';
import { conformance } from '../helpers/suite.js';

conformance({ name: 'over gRPC', options: {}, through: throughGrpc });
