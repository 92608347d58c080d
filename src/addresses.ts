/**
 * The wildcard ("every interface") address in any of its spellings: IPv4
 * 0.0.0.0, IPv6 ::, and the IPv4-mapped ::ffff:0.0.0.0, on which Linux
 * accepts IPv4 connections from every interface. Node's BlockList matches
 * an IPv4-mapped address against the IPv4 rule and reads every IPv6 form.
 */
import { BlockList, isIP } from 'node:net';

const WILDCARD = new BlockList();
WILDCARD.addAddress('0.0.0.0', 'ipv4');
WILDCARD.addAddress('::', 'ipv6');

/** Whether `address` (an IP address, no brackets or port) is the wildcard address; false for anything that is not an IP address. */
export function isEveryInterface(address: string): boolean {
  const family = isIP(address);
  return family !== 0 && WILDCARD.check(address, family === 6 ? 'ipv6' : 'ipv4');
}
