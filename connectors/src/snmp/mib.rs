//! tocsin's built-in MIB names: the objects operators poll most, their numeric OIDs and syntax,
//! the tables they form, and the standard notifications. Loading MIB files is not supported;
//! numeric OIDs work for everything else.

use std::collections::HashMap;
use std::sync::LazyLock;

/// How an object's value is typed in SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// INTEGER, Integer32, enumerations, TruthValue.
    Integer,
    Counter32,
    Counter64,
    /// Gauge32 and Unsigned32.
    Gauge32,
    /// TimeTicks and TimeStamp, in hundredths of a second.
    TimeTicks,
    /// DisplayString and other text.
    Text,
    /// Octet strings shown as colon-separated hex: PhysAddress, SnmpEngineID, DateAndTime.
    Hex,
    /// OBJECT IDENTIFIER, shown numerically.
    Oid,
    IpAddress,
    /// A table (SEQUENCE OF); its rows are `oid.1.<column>.<index>`.
    Table,
    /// A NOTIFICATION-TYPE (trap).
    Notification,
}

impl Syntax {
    /// Whether the SQL column is BIGINT (else TEXT).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Syntax::Integer
                | Syntax::Counter32
                | Syntax::Counter64
                | Syntax::Gauge32
                | Syntax::TimeTicks
        )
    }
}

/// One named object.
#[derive(Debug)]
pub struct Object {
    pub module: &'static str,
    pub name: &'static str,
    pub oid: Vec<u32>,
    pub syntax: Syntax,
    /// For tables: the objects whose values form the row index, in order.
    pub index: &'static [&'static str],
}

impl Object {
    /// `MODULE::name`.
    pub fn qualified(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }
}

use Syntax::*;

/// (module, name, OID, syntax, index of a table).
type Def = (
    &'static str,
    &'static str,
    &'static str,
    Syntax,
    &'static [&'static str],
);

const NONE: &[&str] = &[];

#[rustfmt::skip]
const DEFS: &[Def] = &[
    // SNMPv2-MIB (RFC 3418): the system group and trap objects
    ("SNMPv2-MIB", "sysDescr", "1.3.6.1.2.1.1.1", Text, NONE),
    ("SNMPv2-MIB", "sysObjectID", "1.3.6.1.2.1.1.2", Oid, NONE),
    ("SNMPv2-MIB", "sysUpTime", "1.3.6.1.2.1.1.3", TimeTicks, NONE),
    ("SNMPv2-MIB", "sysContact", "1.3.6.1.2.1.1.4", Text, NONE),
    ("SNMPv2-MIB", "sysName", "1.3.6.1.2.1.1.5", Text, NONE),
    ("SNMPv2-MIB", "sysLocation", "1.3.6.1.2.1.1.6", Text, NONE),
    ("SNMPv2-MIB", "sysServices", "1.3.6.1.2.1.1.7", Integer, NONE),
    ("SNMPv2-MIB", "sysORLastChange", "1.3.6.1.2.1.1.8", TimeTicks, NONE),
    ("SNMPv2-MIB", "sysORTable", "1.3.6.1.2.1.1.9", Table, &["sysORIndex"]),
    ("SNMPv2-MIB", "sysORIndex", "1.3.6.1.2.1.1.9.1.1", Integer, NONE),
    ("SNMPv2-MIB", "sysORID", "1.3.6.1.2.1.1.9.1.2", Oid, NONE),
    ("SNMPv2-MIB", "sysORDescr", "1.3.6.1.2.1.1.9.1.3", Text, NONE),
    ("SNMPv2-MIB", "sysORUpTime", "1.3.6.1.2.1.1.9.1.4", TimeTicks, NONE),
    ("SNMPv2-MIB", "snmpTrapOID", "1.3.6.1.6.3.1.1.4.1", Oid, NONE),
    ("SNMPv2-MIB", "snmpTrapEnterprise", "1.3.6.1.6.3.1.1.4.3", Oid, NONE),
    ("SNMPv2-MIB", "coldStart", "1.3.6.1.6.3.1.1.5.1", Notification, NONE),
    ("SNMPv2-MIB", "warmStart", "1.3.6.1.6.3.1.1.5.2", Notification, NONE),
    ("SNMPv2-MIB", "authenticationFailure", "1.3.6.1.6.3.1.1.5.5", Notification, NONE),
    ("RFC1213-MIB", "egpNeighborLoss", "1.3.6.1.6.3.1.1.5.6", Notification, NONE),
    ("SNMP-COMMUNITY-MIB", "snmpTrapAddress", "1.3.6.1.6.3.18.1.3", IpAddress, NONE),
    ("SNMP-COMMUNITY-MIB", "snmpTrapCommunity", "1.3.6.1.6.3.18.1.4", Text, NONE),
    // SNMP-FRAMEWORK-MIB (RFC 3411)
    ("SNMP-FRAMEWORK-MIB", "snmpEngineID", "1.3.6.1.6.3.10.2.1.1", Hex, NONE),
    ("SNMP-FRAMEWORK-MIB", "snmpEngineBoots", "1.3.6.1.6.3.10.2.1.2", Integer, NONE),
    ("SNMP-FRAMEWORK-MIB", "snmpEngineTime", "1.3.6.1.6.3.10.2.1.3", Integer, NONE),
    ("SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize", "1.3.6.1.6.3.10.2.1.4", Integer, NONE),
    // IF-MIB (RFC 2863)
    ("IF-MIB", "linkDown", "1.3.6.1.6.3.1.1.5.3", Notification, NONE),
    ("IF-MIB", "linkUp", "1.3.6.1.6.3.1.1.5.4", Notification, NONE),
    ("IF-MIB", "ifNumber", "1.3.6.1.2.1.2.1", Integer, NONE),
    ("IF-MIB", "ifTable", "1.3.6.1.2.1.2.2", Table, &["ifIndex"]),
    ("IF-MIB", "ifIndex", "1.3.6.1.2.1.2.2.1.1", Integer, NONE),
    ("IF-MIB", "ifDescr", "1.3.6.1.2.1.2.2.1.2", Text, NONE),
    ("IF-MIB", "ifType", "1.3.6.1.2.1.2.2.1.3", Integer, NONE),
    ("IF-MIB", "ifMtu", "1.3.6.1.2.1.2.2.1.4", Integer, NONE),
    ("IF-MIB", "ifSpeed", "1.3.6.1.2.1.2.2.1.5", Gauge32, NONE),
    ("IF-MIB", "ifPhysAddress", "1.3.6.1.2.1.2.2.1.6", Hex, NONE),
    ("IF-MIB", "ifAdminStatus", "1.3.6.1.2.1.2.2.1.7", Integer, NONE),
    ("IF-MIB", "ifOperStatus", "1.3.6.1.2.1.2.2.1.8", Integer, NONE),
    ("IF-MIB", "ifLastChange", "1.3.6.1.2.1.2.2.1.9", TimeTicks, NONE),
    ("IF-MIB", "ifInOctets", "1.3.6.1.2.1.2.2.1.10", Counter32, NONE),
    ("IF-MIB", "ifInUcastPkts", "1.3.6.1.2.1.2.2.1.11", Counter32, NONE),
    ("IF-MIB", "ifInNUcastPkts", "1.3.6.1.2.1.2.2.1.12", Counter32, NONE),
    ("IF-MIB", "ifInDiscards", "1.3.6.1.2.1.2.2.1.13", Counter32, NONE),
    ("IF-MIB", "ifInErrors", "1.3.6.1.2.1.2.2.1.14", Counter32, NONE),
    ("IF-MIB", "ifInUnknownProtos", "1.3.6.1.2.1.2.2.1.15", Counter32, NONE),
    ("IF-MIB", "ifOutOctets", "1.3.6.1.2.1.2.2.1.16", Counter32, NONE),
    ("IF-MIB", "ifOutUcastPkts", "1.3.6.1.2.1.2.2.1.17", Counter32, NONE),
    ("IF-MIB", "ifOutNUcastPkts", "1.3.6.1.2.1.2.2.1.18", Counter32, NONE),
    ("IF-MIB", "ifOutDiscards", "1.3.6.1.2.1.2.2.1.19", Counter32, NONE),
    ("IF-MIB", "ifOutErrors", "1.3.6.1.2.1.2.2.1.20", Counter32, NONE),
    ("IF-MIB", "ifOutQLen", "1.3.6.1.2.1.2.2.1.21", Gauge32, NONE),
    ("IF-MIB", "ifSpecific", "1.3.6.1.2.1.2.2.1.22", Oid, NONE),
    ("IF-MIB", "ifXTable", "1.3.6.1.2.1.31.1.1", Table, &["ifIndex"]),
    ("IF-MIB", "ifName", "1.3.6.1.2.1.31.1.1.1.1", Text, NONE),
    ("IF-MIB", "ifInMulticastPkts", "1.3.6.1.2.1.31.1.1.1.2", Counter32, NONE),
    ("IF-MIB", "ifInBroadcastPkts", "1.3.6.1.2.1.31.1.1.1.3", Counter32, NONE),
    ("IF-MIB", "ifOutMulticastPkts", "1.3.6.1.2.1.31.1.1.1.4", Counter32, NONE),
    ("IF-MIB", "ifOutBroadcastPkts", "1.3.6.1.2.1.31.1.1.1.5", Counter32, NONE),
    ("IF-MIB", "ifHCInOctets", "1.3.6.1.2.1.31.1.1.1.6", Counter64, NONE),
    ("IF-MIB", "ifHCInUcastPkts", "1.3.6.1.2.1.31.1.1.1.7", Counter64, NONE),
    ("IF-MIB", "ifHCInMulticastPkts", "1.3.6.1.2.1.31.1.1.1.8", Counter64, NONE),
    ("IF-MIB", "ifHCInBroadcastPkts", "1.3.6.1.2.1.31.1.1.1.9", Counter64, NONE),
    ("IF-MIB", "ifHCOutOctets", "1.3.6.1.2.1.31.1.1.1.10", Counter64, NONE),
    ("IF-MIB", "ifHCOutUcastPkts", "1.3.6.1.2.1.31.1.1.1.11", Counter64, NONE),
    ("IF-MIB", "ifHCOutMulticastPkts", "1.3.6.1.2.1.31.1.1.1.12", Counter64, NONE),
    ("IF-MIB", "ifHCOutBroadcastPkts", "1.3.6.1.2.1.31.1.1.1.13", Counter64, NONE),
    ("IF-MIB", "ifLinkUpDownTrapEnable", "1.3.6.1.2.1.31.1.1.1.14", Integer, NONE),
    ("IF-MIB", "ifHighSpeed", "1.3.6.1.2.1.31.1.1.1.15", Gauge32, NONE),
    ("IF-MIB", "ifPromiscuousMode", "1.3.6.1.2.1.31.1.1.1.16", Integer, NONE),
    ("IF-MIB", "ifConnectorPresent", "1.3.6.1.2.1.31.1.1.1.17", Integer, NONE),
    ("IF-MIB", "ifAlias", "1.3.6.1.2.1.31.1.1.1.18", Text, NONE),
    ("IF-MIB", "ifCounterDiscontinuityTime", "1.3.6.1.2.1.31.1.1.1.19", TimeTicks, NONE),
    // HOST-RESOURCES-MIB (RFC 2790)
    ("HOST-RESOURCES-MIB", "hrSystemUptime", "1.3.6.1.2.1.25.1.1", TimeTicks, NONE),
    ("HOST-RESOURCES-MIB", "hrSystemDate", "1.3.6.1.2.1.25.1.2", Hex, NONE),
    ("HOST-RESOURCES-MIB", "hrSystemNumUsers", "1.3.6.1.2.1.25.1.5", Gauge32, NONE),
    ("HOST-RESOURCES-MIB", "hrSystemProcesses", "1.3.6.1.2.1.25.1.6", Gauge32, NONE),
    ("HOST-RESOURCES-MIB", "hrSystemMaxProcesses", "1.3.6.1.2.1.25.1.7", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrMemorySize", "1.3.6.1.2.1.25.2.2", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageTable", "1.3.6.1.2.1.25.2.3", Table, &["hrStorageIndex"]),
    ("HOST-RESOURCES-MIB", "hrStorageIndex", "1.3.6.1.2.1.25.2.3.1.1", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageType", "1.3.6.1.2.1.25.2.3.1.2", Oid, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageDescr", "1.3.6.1.2.1.25.2.3.1.3", Text, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageAllocationUnits", "1.3.6.1.2.1.25.2.3.1.4", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageSize", "1.3.6.1.2.1.25.2.3.1.5", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageUsed", "1.3.6.1.2.1.25.2.3.1.6", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrStorageAllocationFailures", "1.3.6.1.2.1.25.2.3.1.7", Counter32, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceTable", "1.3.6.1.2.1.25.3.2", Table, &["hrDeviceIndex"]),
    ("HOST-RESOURCES-MIB", "hrDeviceIndex", "1.3.6.1.2.1.25.3.2.1.1", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceType", "1.3.6.1.2.1.25.3.2.1.2", Oid, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceDescr", "1.3.6.1.2.1.25.3.2.1.3", Text, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceID", "1.3.6.1.2.1.25.3.2.1.4", Oid, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceStatus", "1.3.6.1.2.1.25.3.2.1.5", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrDeviceErrors", "1.3.6.1.2.1.25.3.2.1.6", Counter32, NONE),
    ("HOST-RESOURCES-MIB", "hrProcessorTable", "1.3.6.1.2.1.25.3.3", Table, &["hrDeviceIndex"]),
    ("HOST-RESOURCES-MIB", "hrProcessorFrwID", "1.3.6.1.2.1.25.3.3.1.1", Oid, NONE),
    ("HOST-RESOURCES-MIB", "hrProcessorLoad", "1.3.6.1.2.1.25.3.3.1.2", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunTable", "1.3.6.1.2.1.25.4.2", Table, &["hrSWRunIndex"]),
    ("HOST-RESOURCES-MIB", "hrSWRunIndex", "1.3.6.1.2.1.25.4.2.1.1", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunName", "1.3.6.1.2.1.25.4.2.1.2", Text, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunID", "1.3.6.1.2.1.25.4.2.1.3", Oid, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunPath", "1.3.6.1.2.1.25.4.2.1.4", Text, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunParameters", "1.3.6.1.2.1.25.4.2.1.5", Text, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunType", "1.3.6.1.2.1.25.4.2.1.6", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunStatus", "1.3.6.1.2.1.25.4.2.1.7", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunPerfTable", "1.3.6.1.2.1.25.5.1", Table, &["hrSWRunIndex"]),
    ("HOST-RESOURCES-MIB", "hrSWRunPerfCPU", "1.3.6.1.2.1.25.5.1.1.1", Integer, NONE),
    ("HOST-RESOURCES-MIB", "hrSWRunPerfMem", "1.3.6.1.2.1.25.5.1.1.2", Integer, NONE),
    // IP-MIB (RFC 4293)
    ("IP-MIB", "ipForwarding", "1.3.6.1.2.1.4.1", Integer, NONE),
    ("IP-MIB", "ipDefaultTTL", "1.3.6.1.2.1.4.2", Integer, NONE),
    ("IP-MIB", "ipInReceives", "1.3.6.1.2.1.4.3", Counter32, NONE),
    ("IP-MIB", "ipInHdrErrors", "1.3.6.1.2.1.4.4", Counter32, NONE),
    ("IP-MIB", "ipInAddrErrors", "1.3.6.1.2.1.4.5", Counter32, NONE),
    ("IP-MIB", "ipForwDatagrams", "1.3.6.1.2.1.4.6", Counter32, NONE),
    ("IP-MIB", "ipInUnknownProtos", "1.3.6.1.2.1.4.7", Counter32, NONE),
    ("IP-MIB", "ipInDiscards", "1.3.6.1.2.1.4.8", Counter32, NONE),
    ("IP-MIB", "ipInDelivers", "1.3.6.1.2.1.4.9", Counter32, NONE),
    ("IP-MIB", "ipOutRequests", "1.3.6.1.2.1.4.10", Counter32, NONE),
    ("IP-MIB", "ipOutDiscards", "1.3.6.1.2.1.4.11", Counter32, NONE),
    ("IP-MIB", "ipOutNoRoutes", "1.3.6.1.2.1.4.12", Counter32, NONE),
    ("IP-MIB", "ipAddrTable", "1.3.6.1.2.1.4.20", Table, &["ipAdEntAddr"]),
    ("IP-MIB", "ipAdEntAddr", "1.3.6.1.2.1.4.20.1.1", IpAddress, NONE),
    ("IP-MIB", "ipAdEntIfIndex", "1.3.6.1.2.1.4.20.1.2", Integer, NONE),
    ("IP-MIB", "ipAdEntNetMask", "1.3.6.1.2.1.4.20.1.3", IpAddress, NONE),
    ("IP-MIB", "ipAdEntBcastAddr", "1.3.6.1.2.1.4.20.1.4", Integer, NONE),
    ("IP-MIB", "ipAdEntReasmMaxSize", "1.3.6.1.2.1.4.20.1.5", Integer, NONE),
    // ENTITY-MIB (RFC 6933) and ENTITY-SENSOR-MIB (RFC 3433)
    ("ENTITY-MIB", "entPhysicalTable", "1.3.6.1.2.1.47.1.1.1", Table, &["entPhysicalIndex"]),
    ("ENTITY-MIB", "entPhysicalIndex", "1.3.6.1.2.1.47.1.1.1.1.1", Integer, NONE),
    ("ENTITY-MIB", "entPhysicalDescr", "1.3.6.1.2.1.47.1.1.1.1.2", Text, NONE),
    ("ENTITY-MIB", "entPhysicalVendorType", "1.3.6.1.2.1.47.1.1.1.1.3", Oid, NONE),
    ("ENTITY-MIB", "entPhysicalContainedIn", "1.3.6.1.2.1.47.1.1.1.1.4", Integer, NONE),
    ("ENTITY-MIB", "entPhysicalClass", "1.3.6.1.2.1.47.1.1.1.1.5", Integer, NONE),
    ("ENTITY-MIB", "entPhysicalParentRelPos", "1.3.6.1.2.1.47.1.1.1.1.6", Integer, NONE),
    ("ENTITY-MIB", "entPhysicalName", "1.3.6.1.2.1.47.1.1.1.1.7", Text, NONE),
    ("ENTITY-MIB", "entPhysicalHardwareRev", "1.3.6.1.2.1.47.1.1.1.1.8", Text, NONE),
    ("ENTITY-MIB", "entPhysicalFirmwareRev", "1.3.6.1.2.1.47.1.1.1.1.9", Text, NONE),
    ("ENTITY-MIB", "entPhysicalSoftwareRev", "1.3.6.1.2.1.47.1.1.1.1.10", Text, NONE),
    ("ENTITY-MIB", "entPhysicalSerialNum", "1.3.6.1.2.1.47.1.1.1.1.11", Text, NONE),
    ("ENTITY-MIB", "entPhysicalMfgName", "1.3.6.1.2.1.47.1.1.1.1.12", Text, NONE),
    ("ENTITY-MIB", "entPhysicalModelName", "1.3.6.1.2.1.47.1.1.1.1.13", Text, NONE),
    ("ENTITY-MIB", "entPhysicalAlias", "1.3.6.1.2.1.47.1.1.1.1.14", Text, NONE),
    ("ENTITY-MIB", "entPhysicalAssetID", "1.3.6.1.2.1.47.1.1.1.1.15", Text, NONE),
    ("ENTITY-MIB", "entPhysicalIsFRU", "1.3.6.1.2.1.47.1.1.1.1.16", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorTable", "1.3.6.1.2.1.99.1.1", Table, &["entPhysicalIndex"]),
    ("ENTITY-SENSOR-MIB", "entPhySensorType", "1.3.6.1.2.1.99.1.1.1.1", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorScale", "1.3.6.1.2.1.99.1.1.1.2", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorPrecision", "1.3.6.1.2.1.99.1.1.1.3", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorValue", "1.3.6.1.2.1.99.1.1.1.4", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorOperStatus", "1.3.6.1.2.1.99.1.1.1.5", Integer, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorUnitsDisplay", "1.3.6.1.2.1.99.1.1.1.6", Text, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorValueTimeStamp", "1.3.6.1.2.1.99.1.1.1.7", TimeTicks, NONE),
    ("ENTITY-SENSOR-MIB", "entPhySensorValueUpdateRate", "1.3.6.1.2.1.99.1.1.1.8", Gauge32, NONE),
    // UCD-SNMP-MIB (net-snmp's own): load, memory, CPU ticks
    ("UCD-SNMP-MIB", "memTotalSwap", "1.3.6.1.4.1.2021.4.3", Integer, NONE),
    ("UCD-SNMP-MIB", "memAvailSwap", "1.3.6.1.4.1.2021.4.4", Integer, NONE),
    ("UCD-SNMP-MIB", "memTotalReal", "1.3.6.1.4.1.2021.4.5", Integer, NONE),
    ("UCD-SNMP-MIB", "memAvailReal", "1.3.6.1.4.1.2021.4.6", Integer, NONE),
    ("UCD-SNMP-MIB", "memBuffer", "1.3.6.1.4.1.2021.4.14", Integer, NONE),
    ("UCD-SNMP-MIB", "memCached", "1.3.6.1.4.1.2021.4.15", Integer, NONE),
    ("UCD-SNMP-MIB", "laTable", "1.3.6.1.4.1.2021.10", Table, &["laIndex"]),
    ("UCD-SNMP-MIB", "laIndex", "1.3.6.1.4.1.2021.10.1.1", Integer, NONE),
    ("UCD-SNMP-MIB", "laNames", "1.3.6.1.4.1.2021.10.1.2", Text, NONE),
    ("UCD-SNMP-MIB", "laLoad", "1.3.6.1.4.1.2021.10.1.3", Text, NONE),
    ("UCD-SNMP-MIB", "laConfig", "1.3.6.1.4.1.2021.10.1.4", Text, NONE),
    ("UCD-SNMP-MIB", "laLoadInt", "1.3.6.1.4.1.2021.10.1.5", Integer, NONE),
    ("UCD-SNMP-MIB", "ssCpuRawUser", "1.3.6.1.4.1.2021.11.50", Counter32, NONE),
    ("UCD-SNMP-MIB", "ssCpuRawNice", "1.3.6.1.4.1.2021.11.51", Counter32, NONE),
    ("UCD-SNMP-MIB", "ssCpuRawSystem", "1.3.6.1.4.1.2021.11.52", Counter32, NONE),
    ("UCD-SNMP-MIB", "ssCpuRawIdle", "1.3.6.1.4.1.2021.11.53", Counter32, NONE),
    ("UCD-SNMP-MIB", "ssCpuRawWait", "1.3.6.1.4.1.2021.11.54", Counter32, NONE),
];

/// The name table, indexed both ways.
pub struct Mib {
    objects: Vec<Object>,
    by_name: HashMap<String, usize>,
    by_oid: HashMap<Vec<u32>, usize>,
}

/// The built-in name table.
pub fn mib() -> &'static Mib {
    static MIB: LazyLock<Mib> = LazyLock::new(|| {
        let objects: Vec<Object> = DEFS
            .iter()
            .map(|(module, name, oid, syntax, index)| Object {
                module,
                name,
                oid: parse_numeric(oid).expect("built-in OIDs are numeric"),
                syntax: *syntax,
                index,
            })
            .collect();
        let mut by_name = HashMap::new();
        let mut by_oid = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            by_name.insert(o.qualified().to_ascii_lowercase(), i);
            by_name.insert(o.name.to_ascii_lowercase(), i);
            by_oid.insert(o.oid.clone(), i);
        }
        Mib {
            objects,
            by_name,
            by_oid,
        }
    });
    &MIB
}

/// Parses a dotted numeric OID, with or without a leading dot.
pub fn parse_numeric(text: &str) -> Option<Vec<u32>> {
    let t = text.trim().trim_start_matches('.');
    if t.is_empty() {
        return None;
    }
    let arcs: Option<Vec<u32>> = t.split('.').map(|a| a.parse().ok()).collect();
    arcs.filter(|a| a.len() >= 2 && a[0] <= 2 && (a[0] == 2 || a[1] < 40))
}

/// Dotted numeric form, without a leading dot.
pub fn dotted(oid: &[u32]) -> String {
    let mut s = String::with_capacity(oid.len() * 3);
    for (i, a) in oid.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(&a.to_string());
    }
    s
}

impl Mib {
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// An object by `MODULE::name` or a bare name (case-insensitive).
    pub fn by_name(&self, name: &str) -> Option<&Object> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|i| &self.objects[*i])
    }

    /// An object by its exact OID.
    pub fn by_oid(&self, oid: &[u32]) -> Option<&Object> {
        self.by_oid.get(oid).map(|i| &self.objects[*i])
    }

    /// The object an instance OID belongs to (the longest known prefix) and the instance suffix.
    pub fn lookup_instance<'a>(&self, oid: &'a [u32]) -> Option<(&Object, &'a [u32])> {
        (1..=oid.len())
            .rev()
            .find_map(|n| self.by_oid(&oid[..n]).map(|o| (o, &oid[n..])))
    }

    /// `IF-MIB::ifDescr.2` for a known instance, else the dotted OID.
    pub fn symbolic(&self, oid: &[u32]) -> String {
        match self.lookup_instance(oid) {
            Some((o, [])) => o.qualified(),
            Some((o, rest)) => format!("{}.{}", o.qualified(), dotted(rest)),
            None => dotted(oid),
        }
    }

    /// Resolves `MODULE::name[.instance]`, `name[.instance]` or a numeric OID.
    pub fn resolve(&self, text: &str) -> Result<Vec<u32>, String> {
        let t = text.trim();
        if t.starts_with('.') || t.starts_with(|c: char| c.is_ascii_digit()) {
            return parse_numeric(t).ok_or_else(|| {
                format!("'{t}' is not a valid numeric OID (e.g. 1.3.6.1.2.1.1.3.0)")
            });
        }
        let (name, instance) = match t.find("::") {
            Some(p) => match t[p + 2..].find('.') {
                Some(d) => (&t[..p + 2 + d], Some(&t[p + 3 + d..])),
                None => (t, None),
            },
            None => match t.find('.') {
                Some(d) => (&t[..d], Some(&t[d + 1..])),
                None => (t, None),
            },
        };
        let o = self.by_name(name).ok_or_else(|| {
            format!(
                "unknown MIB name '{name}': tocsin knows the names listed in docs/snmp.md; use a numeric OID for others"
            )
        })?;
        let mut oid = o.oid.clone();
        if let Some(inst) = instance {
            let arcs: Option<Vec<u32>> = inst.split('.').map(|a| a.parse().ok()).collect();
            oid.extend(arcs.ok_or_else(|| format!("'{t}': the instance '{inst}' is not numeric"))?);
        }
        Ok(oid)
    }

    /// Whether an object is a column of a known table (its parent is the table's entry).
    pub fn is_column(&self, o: &Object) -> bool {
        let n = o.oid.len();
        n > 2
            && o.oid[n - 2] == 1
            && self
                .by_oid(&o.oid[..n - 2])
                .is_some_and(|t| t.syntax == Syntax::Table)
    }

    /// The columns of a known table: objects directly under its entry (`table.1`).
    pub fn columns(&self, table: &Object) -> Vec<&Object> {
        let mut entry = table.oid.clone();
        entry.push(1);
        let mut cols: Vec<&Object> = self
            .objects
            .iter()
            .filter(|o| o.oid.len() == entry.len() + 1 && o.oid.starts_with(&entry))
            .collect();
        cols.sort_by_key(|o| o.oid[entry.len()]);
        cols
    }
}

/// `ifHCInOctets` → `if_hc_in_octets`, `sysORID` → `sys_orid`, `hrSWRunPerfCPU` →
/// `hr_sw_run_perf_cpu`: a word starts at an upper-case letter that follows a lower-case letter
/// or digit, or that begins a capitalised word after an acronym.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        if c == '-' {
            out.push('_');
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_of_mib_names() {
        for (n, s) in [
            ("ifDescr", "if_descr"),
            ("ifOperStatus", "if_oper_status"),
            ("ifHCInOctets", "if_hc_in_octets"),
            ("ifInNUcastPkts", "if_in_n_ucast_pkts"),
            ("sysUpTime", "sys_up_time"),
            ("hrSWRunPerfCPU", "hr_sw_run_perf_cpu"),
            ("sysORID", "sys_orid"),
            ("entPhySensorValue", "ent_phy_sensor_value"),
            ("ipAdEntAddr", "ip_ad_ent_addr"),
            ("hrSystemDate", "hr_system_date"),
        ] {
            assert_eq!(snake_case(n), s, "{n}");
        }
    }

    #[test]
    fn names_resolve_both_ways() {
        let m = mib();
        assert_eq!(
            m.resolve("IF-MIB::ifTable").unwrap(),
            vec![1, 3, 6, 1, 2, 1, 2, 2]
        );
        assert_eq!(
            m.resolve("SNMPv2-MIB::sysUpTime.0").unwrap(),
            vec![1, 3, 6, 1, 2, 1, 1, 3, 0]
        );
        assert_eq!(
            m.resolve("sysuptime.0").unwrap(),
            vec![1, 3, 6, 1, 2, 1, 1, 3, 0]
        );
        assert_eq!(
            m.resolve(".1.3.6.1.2.1.1.5.0").unwrap(),
            vec![1, 3, 6, 1, 2, 1, 1, 5, 0]
        );
        assert!(m
            .resolve("IF-MIB::ifBogus")
            .unwrap_err()
            .contains("unknown MIB name"));
        assert!(m.resolve("1.3.x").is_err());
        assert_eq!(
            m.symbolic(&[1, 3, 6, 1, 6, 3, 1, 1, 5, 3]),
            "IF-MIB::linkDown"
        );
        assert_eq!(
            m.symbolic(&[1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 4]),
            "IF-MIB::ifOperStatus.4"
        );
        assert_eq!(m.symbolic(&[1, 3, 6, 1, 4, 1, 99, 1]), "1.3.6.1.4.1.99.1");
        // every table has its index objects and at least one column
        for t in m.objects().iter().filter(|o| o.syntax == Syntax::Table) {
            assert!(!m.columns(t).is_empty(), "{}", t.name);
            for i in t.index {
                assert!(m.by_name(i).is_some(), "{} index {i}", t.name);
            }
        }
        assert_eq!(m.columns(m.by_name("ifTable").unwrap()).len(), 22);
        assert_eq!(m.columns(m.by_name("ifXTable").unwrap()).len(), 19);
        // no two objects share a name or an OID
        assert_eq!(m.by_oid.len(), m.objects().len());
    }
}
