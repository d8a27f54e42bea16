<?php
// One party of the demo: a join request or a payment webhook for the same member, each
// taking the member's lock before it touches the member's records.

declare(strict_types=1);

[, $role, $email, $dir, $seconds] = $argv;
$t0 = (float) getenv('DEMO_T0');
$say = fn (string $what) => printf("[%6.3f s] %-15s %s\n", microtime(true) - $t0, $role, $what);

$say("wants the lock for $email");
$waitStarted = microtime(true);
$lock = joinblock_acquire_lock($email, ['dir' => $dir, 'timeout' => 10]);
$say(sprintf('got it after %.2f s: %s', microtime(true) - $waitStarted, $lock->path()));
usleep((int) ((float) $seconds * 1e6)); // the join or webhook work
$say('done, releasing');
joinblock_release_lock($lock);
